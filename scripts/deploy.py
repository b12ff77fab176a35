"""`make deploy` and `make delete`: one command each (docs/operations.md).

    python scripts/deploy.py deploy   # build and push the relay image, sam build, sam deploy
    python scripts/deploy.py delete   # empty the relay repository and payload bucket, sam delete

The Makefile runs it with the SAM venv's Python (boto3 comes with aws-sam-cli) and sets
``SAM`` to that venv's ``sam``. Every command is printed before it runs, one a line,
prefixed ``+ ``; lines starting with ``# `` explain. AWS API calls go through boto3 (no
AWS CLI needed) and are printed as their ``aws`` CLI equivalent.

Settings (environment; ``make deploy VAR=...`` passes them too):

- ``STACK_NAME``: else ``stack_name`` from samconfig.toml.
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION``: else ``region`` from samconfig.toml, else the
  AWS profile's region.
- ``PARAMETER_OVERRIDES``: ``Key=Value`` pairs (space-separated, shell quoting) laid over
  samconfig.toml's ``parameter_overrides``; the merged set is what ``sam deploy`` gets.
- ``RELAY_DESIRED_COUNT`` (or ``RelayDesiredCount`` in PARAMETER_OVERRIDES): relay tasks,
  default 2. ``RELAY_IMAGE_TAG`` (or ``RelayImageTag``): deploy that tag instead of one built
  from this tree (already in the repository: not rebuilt; that is how to roll back).
  samconfig.toml's values for these two are for a bare ``sam deploy`` and are ignored here.
- ``SAM_CONFIG_ENV``: the samconfig.toml environment (default ``default``).
- ``CONFIRM_CHANGESET``: ``0`` deploys without asking, ``1`` asks; unset: samconfig's.
- ``DRY_RUN=1``: print the commands, run none that changes anything, and need neither
  Docker nor AWS credentials; ``<placeholders>`` stand for what would be looked up.

A first deploy (no stack yet, or no RelayRepositoryUri output) bootstraps: the stack itself
creates RelayRepository, so it is deployed once with RelayDesiredCount=0 (no task needs an
image yet), then the image is built and pushed and the stack deployed again with the tasks.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMCONFIG = ROOT / "samconfig.toml"
DEFAULT_DESIRED_COUNT = "2"
# Set by this script, never taken from samconfig.toml (its values serve a bare `sam deploy`).
OWN_PARAMETERS = ("RelayImageTag", "RelayDesiredCount")
# Template parameters without a default: CloudFormation refuses to create the stack without them.
REQUIRED_ON_CREATE = ("HatchetTokenSecretArn", "AllowedWorkflows", "SubnetIds", "SecurityGroupIds")
PLACEHOLDER = re.compile(r"REPLACE_ME|XXXXXX|ACCOUNT_ID|:REGION:")
TRUE = {"1", "true", "yes", "on"}


class DeployError(Exception):
    """A problem to report in one clear message (no traceback)."""


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def warn(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# -- configuration ------------------------------------------------------------------------


def parse_overrides(text: str | Sequence[str] | None, origin: str) -> dict[str, str]:
    """``Key=Value Key2="a b"`` (as `sam deploy --parameter-overrides` takes them) -> dict."""
    if not text:
        return {}
    if not isinstance(text, str):
        text = " ".join(text)
    pairs: dict[str, str] = {}
    for token in shlex.split(text):
        key, sep, value = token.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9]+", key):
            raise DeployError(f"{origin}: {token!r} is not Key=Value")
        pairs[key] = value
    return pairs


@dataclass(frozen=True)
class Config:
    command: str
    stack: str
    region: str | None
    config_env: str
    parameters: dict[str, str]  # samconfig + PARAMETER_OVERRIDES, without OWN_PARAMETERS
    ignored: dict[str, str]  # samconfig's values of OWN_PARAMETERS
    desired_count: str
    image_tag: str | None  # chosen by the user; else built from the tree
    sam: str
    confirm_changeset: bool | None
    dry_run: bool

    def sam_common(self) -> list[str]:
        return [] if self.config_env == "default" else ["--config-env", self.config_env]


def load_config(command: str, env: Mapping[str, str], samconfig: Path = SAMCONFIG) -> Config:
    config_env = env.get("SAM_CONFIG_ENV") or "default"
    document = tomllib.loads(samconfig.read_text("utf-8")) if samconfig.exists() else {}
    section: dict[str, Any] = document.get(config_env, {})

    def setting(key: str) -> Any:  # noqa: ANN401 (TOML values)
        for command_name in ("deploy", "global"):
            value = section.get(command_name, {}).get("parameters", {}).get(key)
            if value is not None:
                return value
        return None

    stack = env.get("STACK_NAME") or setting("stack_name")
    if not stack:
        raise DeployError(f"no stack name: set STACK_NAME or stack_name in {samconfig.name}")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or setting("region")
    from_file = parse_overrides(setting("parameter_overrides"), f"{samconfig.name}")
    from_env = parse_overrides(env.get("PARAMETER_OVERRIDES"), "PARAMETER_OVERRIDES")
    ignored = {k: from_file.pop(k) for k in OWN_PARAMETERS if k in from_file}
    parameters = {**from_file, **from_env}
    desired = (
        parameters.pop("RelayDesiredCount", None)
        or env.get("RELAY_DESIRED_COUNT")
        or DEFAULT_DESIRED_COUNT
    )
    if not desired.isdigit():
        raise DeployError(f"RelayDesiredCount must be a whole number of tasks, not {desired!r}")
    image_tag = parameters.pop("RelayImageTag", None) or env.get("RELAY_IMAGE_TAG") or None
    confirm = env.get("CONFIRM_CHANGESET")
    return Config(
        command=command,
        stack=str(stack),
        region=str(region) if region else None,
        config_env=config_env,
        parameters=parameters,
        ignored=ignored,
        desired_count=desired,
        image_tag=image_tag,
        sam=env.get("SAM") or shutil.which("sam") or "sam",
        confirm_changeset=None if not confirm else confirm.lower() in TRUE,
        dry_run=env.get("DRY_RUN", "").lower() in TRUE,
    )


# -- running --------------------------------------------------------------------------------


class Runner:
    """Prints each command, and runs it unless this is a dry run."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    @staticmethod
    def note(text: str) -> None:
        say(f"# {text}")

    def run(self, argv: Sequence[str], *, stdin: str | None = None, shown: str = "") -> None:
        """A command with side effects: printed, and run unless dry."""
        say(f"+ {shown or shlex.join(argv)}")
        if not self.dry_run:
            self.execute(argv, stdin=stdin)

    @staticmethod
    def execute(argv: Sequence[str], *, stdin: str | None = None) -> None:
        """Run, without printing (the caller printed it)."""
        try:
            subprocess.run(argv, cwd=ROOT, check=True, input=stdin, text=True)  # noqa: S603
        except FileNotFoundError as error:
            raise DeployError(f"{argv[0]}: not found") from error
        except subprocess.CalledProcessError as error:
            raise DeployError(f"`{shlex.join(argv)}` failed (exit {error.returncode})") from error

    @staticmethod
    def look(argv: Sequence[str]) -> str:
        """A local, read-only command (git): printed and run, dry or not; its stdout."""
        say(f"+ {shlex.join(argv)}")
        try:
            done = subprocess.run(  # noqa: S603
                argv, cwd=ROOT, check=True, capture_output=True, text=True
            )
        except (FileNotFoundError, subprocess.CalledProcessError) as error:
            raise DeployError(f"`{shlex.join(argv)}` failed: {error}") from error
        return done.stdout.strip()

    def call[T](self, shown: str, call: Callable[[], T], dry: T) -> T:
        """An AWS API call (boto3), printed as its CLI equivalent; ``dry`` in a dry run."""
        say(f"+ {shown}")
        if self.dry_run:
            return dry
        return call()


class Aws:
    """The few boto3 calls this script makes (imported lazily: a dry run needs none)."""

    def __init__(self, region: str | None) -> None:
        import boto3  # noqa: PLC0415

        self.session = boto3.Session(region_name=region)
        self.region: str | None = self.session.region_name

    def client(self, service: str) -> Any:  # noqa: ANN401 (boto3 clients are untyped)
        return self.session.client(service)

    def has_credentials(self) -> bool:
        return self.session.get_credentials() is not None

    def account(self) -> str:
        return str(self.client("sts").get_caller_identity()["Account"])

    def stack(self, name: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        try:
            stacks = self.client("cloudformation").describe_stacks(StackName=name)["Stacks"]
        except ClientError as error:
            if "does not exist" in str(error):
                return None
            raise
        return dict(stacks[0]) if stacks else None

    def physical_id(self, stack: str, logical_id: str) -> str | None:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        try:
            detail = self.client("cloudformation").describe_stack_resource(
                StackName=stack, LogicalResourceId=logical_id
            )["StackResourceDetail"]
        except ClientError as error:
            if "does not exist" in str(error):
                return None
            raise
        physical = detail.get("PhysicalResourceId")
        return (
            str(physical)
            if physical and "DELETE_COMPLETE" not in detail["ResourceStatus"]
            else None
        )

    def image_exists(self, repository: str, tag: str) -> bool:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        try:
            self.client("ecr").describe_images(
                repositoryName=repository, imageIds=[{"imageTag": tag}]
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ImageNotFoundException":
                return False
            raise
        return True

    def registry_password(self) -> tuple[str, str]:
        data = self.client("ecr").get_authorization_token()["authorizationData"][0]
        user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        return user, password

    def empty_repository(self, repository: str) -> int:
        ecr = self.client("ecr")
        ids = [
            image_id
            for page in ecr.get_paginator("list_images").paginate(repositoryName=repository)
            for image_id in page["imageIds"]
        ]
        for batch in chunks(ids, 100):
            failures = ecr.batch_delete_image(repositoryName=repository, imageIds=batch)["failures"]
            # An image listed under two tags is deleted with the first: not a failure.
            failures = [f for f in failures if f.get("failureCode") != "ImageNotFound"]
            if failures:
                raise DeployError(f"could not delete images of {repository}: {failures}")
        return len(ids)

    def empty_bucket(self, bucket: str) -> int:
        """Every object version and delete marker (an unversioned bucket lists its objects
        with VersionId "null", so this empties both kinds)."""
        s3 = self.client("s3")
        keys = [
            {"Key": entry["Key"], "VersionId": entry["VersionId"]}
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
            for kind in ("Versions", "DeleteMarkers")
            for entry in page.get(kind, [])
        ]
        for batch in chunks(keys, 1000):
            errors = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if errors.get("Errors"):
                raise DeployError(f"could not empty {bucket}: {errors['Errors'][:3]}")
        return len(keys)


def chunks[T](items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def outputs(stack: Mapping[str, Any] | None) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in (stack or {}).get("Outputs", [])}


# -- the two commands -----------------------------------------------------------------------


def docker_answers() -> bool:
    try:
        return not subprocess.run(
            ["docker", "info"],  # noqa: S607
            capture_output=True,
            check=False,
            timeout=60,
        ).returncode
    except subprocess.TimeoutExpired:
        return False


def preflight(config: Config, *, needs_docker: bool) -> tuple[Aws | None, str]:
    """Docker and AWS credentials, all problems at once; (boto3 wrapper, account id)."""
    if needs_docker:
        say("+ docker info")
    say("+ aws sts get-caller-identity --query Account --output text")
    if config.dry_run:
        return None, "<account>"
    problems = []
    if needs_docker:
        if shutil.which("docker") is None:
            problems.append(
                "Docker not found (no `docker` on PATH): make deploy builds the relay image with it"
            )
        elif not docker_answers():
            problems.append("Docker is installed but `docker info` fails: start the Docker daemon")
    if not ((ROOT / config.sam).exists() or shutil.which(config.sam)):
        problems.append(f"sam not found ({config.sam}): run this through `make {config.command}`")
    aws = Aws(config.region)
    if aws.region is None:
        problems.append(
            "no AWS region: set AWS_REGION, or region in samconfig.toml, or in your AWS profile"
        )
    if not aws.has_credentials():
        problems.append(
            "no AWS credentials: configure a profile (`aws configure`, `aws sso login`, then "
            "AWS_PROFILE=...) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    account = ""
    if not problems:
        try:
            account = aws.account()
        except Exception as error:  # noqa: BLE001 (any failure here is the same message)
            problems.append(f"AWS credentials were found but STS refused them: {error}")
    if problems:
        raise DeployError(
            f"make {config.command} cannot start:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return aws, account


def check_parameters(config: Config, *, creating: bool) -> None:
    problems = [
        f"{key}={value} is a placeholder"
        for key, value in config.parameters.items()
        if PLACEHOLDER.search(value)
    ]
    if creating:
        problems += [
            f"{key} is not set" for key in REQUIRED_ON_CREATE if key not in config.parameters
        ]
    if not problems:
        return
    where = "samconfig.toml's parameter_overrides or PARAMETER_OVERRIDES='Key=Value ...'"
    message = "parameters: " + "; ".join(problems) + f" (set them in {where})"
    if config.dry_run:
        warn(f"warning: {message}")
        return
    raise DeployError(message)


def sam_deploy(config: Config, runner: Runner, region: str, tag: str, desired: str) -> None:
    parameters = {**config.parameters, "RelayImageTag": tag, "RelayDesiredCount": desired}
    argv = [config.sam, "deploy", "--stack-name", config.stack, "--region", region]
    argv += config.sam_common()
    argv += ["--parameter-overrides", *(f"{k}={v}" for k, v in parameters.items())]
    if config.confirm_changeset is not None:
        argv.append("--confirm-changeset" if config.confirm_changeset else "--no-confirm-changeset")
    runner.run(argv)


def image_tag(config: Config, runner: Runner) -> tuple[str, bool]:
    """(tag, built from a dirty tree): the user's, else git's short sha (+ ``-dirty``)."""
    if config.image_tag:
        return config.image_tag, False
    sha = runner.look(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(runner.look(["git", "status", "--porcelain"]))
    return (f"{sha}-dirty" if dirty else sha), dirty


def describe(config: Config, runner: Runner, aws: Aws | None, region: str) -> dict[str, Any] | None:
    shown = f"aws cloudformation describe-stacks --stack-name {config.stack} --region {region}"
    return runner.call(shown, lambda: aws.stack(config.stack) if aws else None, None)


def push_image(
    config: Config, runner: Runner, aws: Aws | None, region: str, image: str, *, dirty: bool
) -> None:
    """docker build, ECR login, docker push; nothing when the repository has the tag."""
    repository_uri, _, tag = image.rpartition(":")
    registry, _, repository = repository_uri.partition("/")
    shown = f"aws ecr describe-images --repository-name {repository} --image-ids imageTag={tag}"
    exists = runner.call(shown, lambda: aws.image_exists(repository, tag) if aws else False, False)
    if exists and dirty:
        raise DeployError(
            f"{tag} is already in {repository} and tags are immutable: commit (a new sha, a new "
            "tag) or choose one with RELAY_IMAGE_TAG=..."
        )
    if exists:
        runner.note(f"{image} is already in the repository (tags are immutable): not rebuilt")
        return
    if config.dry_run:
        runner.note("(build and push are skipped when the repository already has the tag)")
    runner.run(["docker", "build", "--platform", "linux/amd64", "-t", image, "."])
    login = ["docker", "login", "--username", "AWS", "--password-stdin", registry]
    user, password = runner.call(
        f"aws ecr get-login-password --region {region} | {shlex.join(login)}",
        lambda: aws.registry_password() if aws else ("AWS", ""),
        ("AWS", ""),
    )
    if not config.dry_run:  # printed above, with the CLI that would fetch the password
        login[3] = user
        runner.execute(login, stdin=password)
    runner.run(["docker", "push", image])


def deploy(config: Config) -> None:
    runner = Runner(config.dry_run)
    runner.note(
        f"make deploy: stack {config.stack}" + (f" in {config.region}" if config.region else "")
    )
    if config.dry_run:
        runner.note("DRY_RUN: nothing is changed; <placeholders> stand for what would be looked up")
    for key, value in config.ignored.items():
        runner.note(f"samconfig.toml's {key}={value} is for a bare `sam deploy`: not used here")
    aws, account = preflight(config, needs_docker=True)
    region = aws.region if aws and aws.region else (config.region or "<region>")
    tag, dirty = image_tag(config, runner)
    stack = describe(config, runner, aws, region)
    status = (stack or {}).get("StackStatus")
    if status == "ROLLBACK_COMPLETE":
        raise DeployError(
            f"stack {config.stack} is in ROLLBACK_COMPLETE (its creation failed and cannot be "
            "updated): read its events in the CloudFormation console, `make delete`, deploy again"
        )
    check_parameters(config, creating=stack is None or status == "REVIEW_IN_PROGRESS")

    repository_uri = outputs(stack).get("RelayRepositoryUri")
    if repository_uri is None:
        runner.note(
            "first deploy only (no stack, or no RelayRepositoryUri output): the stack creates "
            "the repository, so it is deployed once with no relay task"
        )
        runner.run([config.sam, "build", *config.sam_common()])
        sam_deploy(config, runner, region, tag, "0")
        repository_uri = outputs(describe(config, runner, aws, region)).get("RelayRepositoryUri")
        if repository_uri is None:
            if not config.dry_run:
                raise DeployError(f"stack {config.stack} has no RelayRepositoryUri output")
            repository_uri = f"{account}.dkr.ecr.{region}.amazonaws.com/<RelayRepository>"
    image = f"{repository_uri}:{tag}"
    push_image(config, runner, aws, region, image, dirty=dirty)

    runner.run([config.sam, "build", *config.sam_common()])
    sam_deploy(config, runner, region, tag, config.desired_count)
    urls = outputs(describe(config, runner, aws, region))
    say()
    say(f"HTTP API:  {urls.get('HttpApiUrl', '<HttpApiUrl output>')}")
    say(f"WebSocket: {urls.get('WebSocketUrl', '<WebSocketUrl output>')}")
    say(f"Relay:     {image} x {config.desired_count} task(s)")


def delete(config: Config) -> None:
    runner = Runner(config.dry_run)
    runner.note(
        f"make delete: stack {config.stack}" + (f" in {config.region}" if config.region else "")
    )
    if config.dry_run:
        runner.note("DRY_RUN: nothing is changed; <placeholders> stand for what would be looked up")
    aws, _ = preflight(config, needs_docker=False)
    region = aws.region if aws and aws.region else (config.region or "<region>")
    if describe(config, runner, aws, region) is None and aws:
        say(f"stack {config.stack} not found in {region}: nothing to delete")
        return

    def resource(logical_id: str) -> str | None:
        shown = (
            f"aws cloudformation describe-stack-resource --stack-name {config.stack} "
            f"--logical-resource-id {logical_id} --region {region}"
        )
        placeholder: str | None = f"<{logical_id}>"
        return runner.call(
            shown, lambda: aws.physical_id(config.stack, logical_id) if aws else None, placeholder
        )

    def empty() -> None:
        repository = resource("RelayRepository")
        if repository:
            count = runner.call(
                f"aws ecr batch-delete-image --repository-name {repository} --image-ids "
                f"<every image of: aws ecr list-images --repository-name {repository}>",
                lambda: aws.empty_repository(repository) if aws else 0,
                0,
            )
            if not config.dry_run:
                say(f"  {count} image(s) deleted")
        bucket = resource("PayloadBucket")
        if bucket:
            count = runner.call(
                f"aws s3api delete-objects --bucket {bucket} --delete <every object version and "
                f"delete marker of: aws s3api list-object-versions --bucket {bucket}>",
                lambda: aws.empty_bucket(bucket) if aws else 0,
                0,
            )
            if not config.dry_run:
                say(f"  {count} object version(s) deleted")

    argv = [config.sam, "delete", "--stack-name", config.stack, "--region", region, "--no-prompts"]
    argv += config.sam_common()
    empty()
    try:
        runner.run(argv)
    except DeployError:
        # A relay task or a worker may have written an object between emptying and the
        # bucket's deletion: empty again and retry once.
        if aws is None or aws.stack(config.stack) is None:
            raise
        runner.note("the stack is still there: emptying again and retrying once")
        empty()
        runner.run(argv)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in {"deploy", "delete"}:
        warn("usage: deploy.py deploy|delete   (settings: the environment, see the docstring)")
        return 2
    try:
        config = load_config(args[0], os.environ if env is None else env)
        (deploy if config.command == "deploy" else delete)(config)
    except DeployError as error:
        warn(f"error: {error}")
        return 1
    except Exception as error:
        if not type(error).__module__.startswith(("botocore", "boto3")):
            raise
        warn(f"error: AWS: {error}")
        return 1
    except KeyboardInterrupt:
        warn("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
