"""`make deploy` / `make delete` (scripts/deploy.py): the printed plan of a dry run, the
settings it takes, and a clear early failure without Docker or AWS credentials.

Nothing here reaches AWS: no credentials exist in the child's environment (empty config
files, no AWS_* keys, instance metadata disabled), and AWS_ENDPOINT_URL points every
boto3 client at a closed local port in case a call slipped through.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import boto3
import pytest
from moto import mock_aws

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "deploy.py"
SAM_STAMP = REPO_ROOT / ".venv-sam" / ".installed"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hatchway_deploy_script", SCRIPT)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


deploy_script = load_script()


def no_aws_env(tmp_path: Path, path: str, **extra: str) -> dict[str, str]:
    """An environment with no AWS credentials at all (and nothing inherited)."""
    return {
        "PATH": path,
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        **extra,
    }


@pytest.fixture
def git_only_path(tmp_path: Path) -> str:
    """A PATH holding git and nothing else: no docker, no sam, no aws."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    git = shutil.which("git")
    assert git, "the tag comes from git"
    (bin_dir / "git").symlink_to(git)
    return str(bin_dir)


def run_script(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def commands(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("+ ")]


def kind(command: str) -> str:
    """A printed command, named by what it does."""
    patterns = [
        ("docker info", r"docker info$"),
        ("caller identity", r"aws sts get-caller-identity\b"),
        ("git sha", r"git rev-parse --short HEAD$"),
        ("git status", r"git status --porcelain$"),
        ("describe stack", r"aws cloudformation describe-stacks\b"),
        ("describe resource", r"aws cloudformation describe-stack-resource\b"),
        ("image exists?", r"aws ecr describe-images\b"),
        ("docker build", r"docker build\b"),
        ("ecr login", r"aws ecr get-login-password .*\| docker login\b.*--password-stdin"),
        ("docker push", r"docker push\b"),
        ("empty repository", r"aws ecr batch-delete-image\b"),
        ("empty bucket", r"aws s3api delete-objects\b.*list-object-versions"),
        ("sam build", r"\S*sam build\b"),
        ("sam deploy", r"\S*sam deploy\b"),
        ("sam delete", r"\S*sam delete\b.*--no-prompts"),
    ]
    for name, pattern in patterns:
        if re.match(pattern, command):
            return name
    raise AssertionError(f"unexpected command in the plan: {command}")


def parameter(command: str, key: str) -> str:
    match = re.search(rf"(?:^| ){key}=(\S+)", command)
    assert match, f"{key} not in {command}"
    return match.group(1)


def test_deploy_dry_run_prints_build_push_and_deploy_in_order(
    tmp_path: Path, git_only_path: str
) -> None:
    env = no_aws_env(
        tmp_path,
        git_only_path,
        DRY_RUN="1",
        AWS_REGION="eu-west-1",
        PARAMETER_OVERRIDES="AllowedWorkflows=summarize,translate SubnetIds=subnet-a,subnet-b",
    )
    done = run_script("deploy", env)
    assert done.returncode == 0, done.stderr
    plan = commands(done.stdout)
    assert [kind(c) for c in plan] == [
        "docker info",
        "caller identity",
        "git sha",
        "git status",
        "describe stack",
        # a first deploy: the stack creates the repository, with no relay task yet
        "sam build",
        "sam deploy",
        "describe stack",
        # every deploy
        "image exists?",
        "docker build",
        "ecr login",
        "docker push",
        "sam build",
        "sam deploy",
        "describe stack",  # its outputs: the URLs
    ]
    bootstrap, final = (c for c in plan if kind(c) == "sam deploy")
    build = next(c for c in plan if kind(c) == "docker build")
    push = next(c for c in plan if kind(c) == "docker push")

    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tag = parameter(final, "RelayImageTag")
    assert re.fullmatch(rf"{sha}(-dirty)?", tag)
    image = f"<account>.dkr.ecr.eu-west-1.amazonaws.com/<RelayRepository>:{tag}"
    assert f"-t '{image}' ." in build
    assert "--platform linux/amd64" in build  # the task definition is X86_64
    assert push == f"docker push '{image}'"
    assert "--password-stdin '<account>.dkr.ecr.eu-west-1.amazonaws.com'" in plan[10]

    assert parameter(bootstrap, "RelayDesiredCount") == "0"
    assert parameter(final, "RelayDesiredCount") == "2"  # not samconfig's hand-bootstrap 0
    for deploy in (bootstrap, final):
        assert "--stack-name hatchway --region eu-west-1" in deploy  # samconfig's stack name
        assert parameter(deploy, "RelayImageTag") == tag
        assert parameter(deploy, "AllowedWorkflows") == "summarize,translate"
        assert parameter(deploy, "SubnetIds") == "subnet-a,subnet-b"  # over samconfig's
        assert parameter(deploy, "AssignPublicIp") == "DISABLED"  # samconfig's
        assert deploy.count("RelayImageTag=") == 1
        assert deploy.count("RelayDesiredCount=") == 1
    assert "HTTP API:" in done.stdout
    assert "WebSocket:" in done.stdout
    # samconfig's remaining placeholders are reported, not fatal in a dry run
    assert "HatchetTokenSecretArn=" in done.stderr
    assert "placeholder" in done.stderr


def test_deploy_dry_run_takes_the_chosen_tag_count_and_stack(
    tmp_path: Path, git_only_path: str
) -> None:
    env = no_aws_env(
        tmp_path,
        git_only_path,
        DRY_RUN="1",
        AWS_DEFAULT_REGION="us-west-2",
        STACK_NAME="hatchway-staging",
        RELAY_IMAGE_TAG="0123abc",
        RELAY_DESIRED_COUNT="4",
    )
    done = run_script("deploy", env)
    assert done.returncode == 0, done.stderr
    plan = commands(done.stdout)
    assert "git sha" not in [kind(c) for c in plan]  # the tag is given
    final = [c for c in plan if kind(c) == "sam deploy"][-1]
    assert "--stack-name hatchway-staging --region us-west-2" in final
    assert parameter(final, "RelayImageTag") == "0123abc"
    assert parameter(final, "RelayDesiredCount") == "4"
    assert any(kind(c) == "docker push" and c.endswith(":0123abc'") for c in plan)


def test_delete_dry_run_empties_the_repository_and_the_bucket_then_deletes(
    tmp_path: Path, git_only_path: str
) -> None:
    env = no_aws_env(tmp_path, git_only_path, DRY_RUN="1", AWS_REGION="eu-west-1")
    done = run_script("delete", env)
    assert done.returncode == 0, done.stderr
    plan = commands(done.stdout)
    assert [kind(c) for c in plan] == [
        "caller identity",
        "describe stack",
        "describe resource",  # RelayRepository
        "empty repository",
        "describe resource",  # PayloadBucket
        "empty bucket",
        "sam delete",
    ]
    assert "--logical-resource-id RelayRepository" in plan[2]
    assert "--logical-resource-id PayloadBucket" in plan[4]
    assert plan[-1].endswith("sam delete --stack-name hatchway --region eu-west-1 --no-prompts")


def test_without_docker_or_credentials_deploy_fails_early_and_clearly(
    tmp_path: Path, git_only_path: str
) -> None:
    done = run_script("deploy", no_aws_env(tmp_path, git_only_path, AWS_REGION="eu-west-1"))
    assert done.returncode == 1
    assert "make deploy cannot start" in done.stderr
    assert "Docker not found" in done.stderr
    assert "no AWS credentials" in done.stderr
    assert "Traceback" not in done.stderr
    ran = [kind(c) for c in commands(done.stdout)]
    assert ran == ["docker info", "caller identity"]  # the checks, and nothing after them


def test_without_credentials_delete_fails_early_and_clearly(
    tmp_path: Path, git_only_path: str
) -> None:
    done = run_script("delete", no_aws_env(tmp_path, git_only_path, AWS_REGION="eu-west-1"))
    assert done.returncode == 1
    assert "make delete cannot start" in done.stderr
    assert "no AWS credentials" in done.stderr
    assert "Docker" not in done.stderr  # deleting needs no Docker
    assert [kind(c) for c in commands(done.stdout)] == ["caller identity"]


def test_settings_from_samconfig_and_the_environment(tmp_path: Path) -> None:
    samconfig = tmp_path / "samconfig.toml"
    samconfig.write_text(
        'version = 0.1\n[default.global.parameters]\nstack_name = "from-file"\n'
        '[default.deploy.parameters]\nregion = "ap-south-1"\n'
        'parameter_overrides = "A=1 B=\\"x y\\" RelayImageTag=REPLACE_ME RelayDesiredCount=0"\n'
    )
    load = deploy_script.load_config
    config = load("deploy", {}, samconfig)
    assert (config.stack, config.region) == ("from-file", "ap-south-1")
    assert config.parameters == {"A": "1", "B": "x y"}
    assert config.ignored == {"RelayImageTag": "REPLACE_ME", "RelayDesiredCount": "0"}
    assert (config.desired_count, config.image_tag, config.dry_run) == ("2", None, False)

    config = load(
        "deploy",
        {
            "STACK_NAME": "from-env",
            "AWS_DEFAULT_REGION": "eu-central-1",
            "AWS_REGION": "eu-west-3",
            "PARAMETER_OVERRIDES": "B=2 RelayDesiredCount=0 RelayImageTag=abc",
            "DRY_RUN": "1",
        },
        samconfig,
    )
    assert (config.stack, config.region) == ("from-env", "eu-west-3")
    assert config.parameters == {"A": "1", "B": "2"}
    assert (config.desired_count, config.image_tag, config.dry_run) == ("0", "abc", True)
    assert load("deploy", {"AWS_DEFAULT_REGION": "eu-central-1"}, samconfig).region == (
        "eu-central-1"
    )

    with pytest.raises(deploy_script.DeployError, match="Key=Value"):
        load("deploy", {"PARAMETER_OVERRIDES": "oops"}, samconfig)
    with pytest.raises(deploy_script.DeployError, match="whole number"):
        load("deploy", {"RELAY_DESIRED_COUNT": "two"}, samconfig)


def test_make_deploy_calls_the_script_through_the_sam_venv() -> None:
    for target in ("deploy", "delete"):
        done = subprocess.run(
            ["make", "-n", target, "DRY_RUN=1"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        assert f".venv-sam/bin/python scripts/deploy.py {target}" in done.stdout
        assert 'SAM=".venv-sam/bin/sam"' in done.stdout


@pytest.mark.skipif(
    subprocess.run(
        ["make", "-q", str(SAM_STAMP.relative_to(REPO_ROOT))], cwd=REPO_ROOT, check=False
    ).returncode
    != 0,
    reason="the SAM venv is missing or stale (make check-template sets it up)",
)
def test_make_deploy_dry_run(tmp_path: Path) -> None:
    """The real `make deploy DRY_RUN=1`, with the SAM venv's Python and sam."""
    env = no_aws_env(tmp_path, os.environ["PATH"])
    if "PYENV_ROOT" in os.environ or (Path.home() / ".pyenv").is_dir():  # python3.12's shim
        env["PYENV_ROOT"] = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    done = subprocess.run(
        ["make", "--no-print-directory", "deploy", "DRY_RUN=1", "AWS_REGION=eu-west-1"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    plan = [kind(c) for c in commands(done.stdout)]
    order = ["docker build", "ecr login", "docker push", "sam build", "sam deploy"]
    assert plan[-len(order) - 1 : -1] == order
    assert any(c.startswith(".venv-sam/bin/sam deploy") for c in commands(done.stdout))


# -- the real (not dry) paths, against moto in this process, with stand-in docker and sam --


@pytest.fixture
def moto_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """moto's AWS in this process, fake credentials, and `docker`/`sam` stand-ins that log
    their arguments (and stdin) to tmp_path/calls.log."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name in ("docker", "sam"):
        stand_in = bin_dir / name
        stand_in.write_text(
            "#!/bin/sh\n"
            f'echo "{name} $*" >> {log}\n'
            f'if [ "$1" = login ]; then echo "stdin $(cat)" >> {log}; fi\n'
        )
        stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with mock_aws():
        yield {
            **os.environ,
            "AWS_REGION": "eu-west-1",
            "SAM": str(bin_dir / "sam"),
            "PARAMETER_OVERRIDES": (
                "HatchetTokenSecretArn=arn:aws:secretsmanager:eu-west-1:123456789012:secret:t-AbCdEf"
                " SubnetIds=subnet-1 SecurityGroupIds=sg-1"
            ),
        }


def make_stack() -> tuple[str, str]:
    """A stack named hatchway holding the two resources make delete empties; (repo, bucket)."""
    template = {
        "Resources": {
            "RelayRepository": {
                "Type": "AWS::ECR::Repository",
                "Properties": {"RepositoryName": "hatchway-relay"},  # moto names it invalidly
            },
            "PayloadBucket": {"Type": "AWS::S3::Bucket"},
        },
        "Outputs": {
            "RelayRepositoryUri": {"Value": {"Fn::GetAtt": ["RelayRepository", "RepositoryUri"]}},
            "HttpApiUrl": {"Value": "https://api.example"},
            "WebSocketUrl": {"Value": "wss://ws.example/prod"},
        },
    }
    cloudformation = boto3.client("cloudformation", region_name="eu-west-1")
    cloudformation.create_stack(StackName="hatchway", TemplateBody=json.dumps(template))
    resources = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cloudformation.describe_stack_resources(StackName="hatchway")["StackResources"]
    }
    return resources["RelayRepository"], resources["PayloadBucket"]


def push_fake_image(repository: str, tag: str) -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1,
            "digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest(),
        },
        "layers": [],
    }
    boto3.client("ecr", region_name="eu-west-1").put_image(
        repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag
    )


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_delete_empties_repository_and_versioned_bucket_then_sam_deletes(
    tmp_path: Path, moto_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    repository, bucket = make_stack()
    for tag in ("aaa", "bbb"):
        push_fake_image(repository, tag)
    s3 = boto3.client("s3", region_name="eu-west-1")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for body in (b"one", b"two"):
        s3.put_object(Bucket=bucket, Key="runs/r1/chunk", Body=body)
    s3.delete_object(Bucket=bucket, Key="runs/r1/chunk")  # a delete marker

    assert deploy_script.main(["delete"], moto_env) == 0

    ecr = boto3.client("ecr", region_name="eu-west-1")
    assert ecr.list_images(repositoryName=repository)["imageIds"] == []
    versions = s3.list_object_versions(Bucket=bucket)
    assert versions.get("Versions", []) == []
    assert versions.get("DeleteMarkers", []) == []
    assert calls(tmp_path) == ["sam delete --stack-name hatchway --region eu-west-1 --no-prompts"]
    out = capsys.readouterr().out
    assert "2 image(s) deleted" in out
    assert "3 object version(s) deleted" in out


def test_delete_of_a_missing_stack_says_so(
    tmp_path: Path, moto_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert deploy_script.main(["delete"], moto_env) == 0
    assert "stack hatchway not found in eu-west-1: nothing to delete" in capsys.readouterr().out
    assert calls(tmp_path) == []


def test_deploy_builds_logs_in_pushes_and_deploys(
    tmp_path: Path, moto_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    repository, _ = make_stack()
    uri = boto3.client("ecr", region_name="eu-west-1").describe_repositories(
        repositoryNames=[repository]
    )["repositories"][0]["repositoryUri"]
    registry = uri.split("/")[0]

    assert deploy_script.main(["deploy"], {**moto_env, "RELAY_IMAGE_TAG": "v2"}) == 0

    logged = calls(tmp_path)
    assert logged[:4] == [
        "docker info",
        f"docker build --platform linux/amd64 -t {uri}:v2 .",
        f"docker login --username AWS --password-stdin {registry}",
        logged[3],
    ]
    assert logged[3].startswith("stdin ")
    assert len(logged[3]) > len("stdin ")  # the ECR token's password, never on the command line
    assert logged[4:6] == [f"docker push {uri}:v2", "sam build"]
    (deploy,) = logged[6:]
    assert deploy.startswith("sam deploy --stack-name hatchway --region eu-west-1")
    assert "SubnetIds=subnet-1 SecurityGroupIds=sg-1 " in deploy  # over samconfig's placeholders
    assert deploy.endswith("AssignPublicIp=DISABLED RelayImageTag=v2 RelayDesiredCount=2")
    out = capsys.readouterr().out
    assert "HTTP API:  https://api.example" in out
    assert "WebSocket: wss://ws.example/prod" in out


def test_deploy_of_a_tag_already_pushed_does_not_rebuild_it(
    tmp_path: Path, moto_env: dict[str, str]
) -> None:
    repository, _ = make_stack()
    push_fake_image(repository, "v1")
    assert deploy_script.main(["deploy"], {**moto_env, "RELAY_IMAGE_TAG": "v1"}) == 0
    logged = calls(tmp_path)
    assert [line.split()[:2] for line in logged] == [
        ["docker", "info"],
        ["sam", "build"],
        ["sam", "deploy"],
    ]
    assert "RelayImageTag=v1 RelayDesiredCount=2" in logged[-1]


def test_deploy_refuses_placeholders_before_changing_anything(
    tmp_path: Path, moto_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**moto_env, "PARAMETER_OVERRIDES": "SubnetIds=subnet-1"}
    assert deploy_script.main(["deploy"], env) == 1
    err = capsys.readouterr().err
    assert "HatchetTokenSecretArn=" in err
    assert "placeholder" in err
    assert "AllowedWorkflows is not set" in err  # a first deploy: the stack does not exist
    assert calls(tmp_path) == ["docker info"]
