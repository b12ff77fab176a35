import json

import boto3


def lambda_handler(event, context):
    route_key = event["requestContext"]["routeKey"]
    connection_id = event["requestContext"]["connectionId"]
    if route_key in ("$connect", "$disconnect"):
        return {"statusCode": 200}

    domain_name = event["requestContext"]["domainName"]
    stage = event["requestContext"]["stage"]
    client = boto3.client("apigatewaymanagementapi", endpoint_url=f"https://{domain_name}/{stage}")
    message = json.loads(event["body"]).get("data", "")
    client.post_to_connection(ConnectionId=connection_id, Data=f"echo: {message}".encode())
    return {"statusCode": 200, "body": "sent"}
