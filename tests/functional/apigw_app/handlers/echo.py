import json
import os
import time

import boto3

# Built the usual way: the endpoint comes from AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI.
management = boto3.client("apigatewaymanagementapi")


def handler(event, _context):
    message = json.loads(event["body"])["message"]
    management.post_to_connection(
        ConnectionId=event["requestContext"]["connectionId"],
        Data=f"{os.environ['ECHO_PREFIX']}{message}".encode(),
    )
    return {"statusCode": 200}


def default(event, _context):
    return {"statusCode": 200, "body": f"{os.environ['GREETING']}, default: {event['body']}"}


def slow(_event, _context):
    time.sleep(3)
    return {"statusCode": 200}
