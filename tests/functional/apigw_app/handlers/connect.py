def handler(event, _context):
    if (event.get("queryStringParameters") or {}).get("refuse"):
        return {"statusCode": 403, "body": "refused by $connect"}
    return {"statusCode": 200}


def disconnect(_event, _context):
    return {"statusCode": 200}
