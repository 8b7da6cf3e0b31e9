"""The preview-stack script CI calls: which stage a pull request gets and which CDK command
deploys or destroys it (the stage itself is synthesized in test_synth.py)."""

from __future__ import annotations

import pytest

from infra.preview import cdk_command, main, preview_stage


def test_a_pull_request_gets_its_own_stage_and_commands() -> None:
    assert preview_stage("123") == "preview-123"
    assert cdk_command("deploy", "preview-123") == [
        "npx", "cdk", "deploy", "--all", "-c", "stage=preview-123",
        "--require-approval", "never"]
    assert cdk_command("destroy", "preview-123")[-1] == "--force"


@pytest.mark.parametrize("pr", ["", "12a", "-1", "1234567", "prod", "0", "0123"])
def test_anything_but_a_pull_request_number_is_one_line(pr: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", pr, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pull request number") and err.count("\n") == 1


def test_dry_run_prints_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["destroy", "42", "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == \
        "npx cdk destroy --all -c stage=preview-42 --force"
