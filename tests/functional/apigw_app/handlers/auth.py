"""REQUEST authorizer: tokens "allow-<user>" pass, "deny" is denied, others are unauthorized."""


def handler(event, _context):
    token = (event.get("queryStringParameters") or {}).get("token", "")
    if token == "deny":
        effect = "Deny"
    elif token.startswith("allow-"):
        effect = "Allow"
    else:
        raise Exception("Unauthorized")  # noqa: TRY002 - API Gateway's convention for 401
    return {
        "principalId": token.removeprefix("allow-"),
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": effect, "Resource": event["methodArn"]}
            ],
        },
        "context": {"user": token.removeprefix("allow-")},
    }
