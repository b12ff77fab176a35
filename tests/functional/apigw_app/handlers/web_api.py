import json


def handler(event, _context):
    if event["routeKey"] == "POST /echo":
        return {"statusCode": 201, "headers": {"x-echo": "yes"}, "body": event.get("body", "")}
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(
            {"hello": event["pathParameters"]["name"], "query": event.get("queryStringParameters")}
        ),
    }
