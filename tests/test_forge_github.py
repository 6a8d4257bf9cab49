"""GitHubForge with the real PyGithub against FakeGitHub, a local server speaking GitHub's REST API."""

from __future__ import annotations

import base64
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common.errors import SettingsError
from common.forge.base import ForgeError, IssueComment
from common.forge.factory import make_forge
from common.forge.github import GitHubForge, web_base
from common.forge.local import LocalForge
from common.gitsafe import GitCredential, run_git
from common.settings import Settings
from common.specialties import StatusLabel
from tests.fakes.github_server import FakeGitHub

TOKEN = "ghp_fakeTokenThatMustNeverLeak0123"
REPO = "acme/widgets"
SECONDARY = {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
             "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}


def _settings(api_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"forge": "github", "github_token": TOKEN, "github_api_url": api_url}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub() as server:
        server.add_token(TOKEN, login="forgecrew-user")
        server.add_repo(REPO)
        server.add_issue(REPO, 7, "Crash on empty input", "Steps: run with ''", author="alice",
                         labels=("forgecrew", "forgecrew:queued"))
        server.add_comment(REPO, 7, "Also happens on Windows", author="bob")
        server.add_comment(REPO, 7, "Queued for backend", author="forgecrew[bot]", kind="Bot")
        yield server
        assert server.violations == [], "PyGithub sent requests outside GitHub's OpenAPI description"


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def forge(fake: FakeGitHub, sleeps: list[float]) -> GitHubForge:
    return GitHubForge(_settings(fake.api_url), write_interval=0, sleep=sleeps.append)


def test_token_auth_reads_default_branch(fake: FakeGitHub, forge: GitHubForge) -> None:
    assert forge.default_branch(REPO) == "main"
    assert fake.requests[-1].headers["authorization"] == f"token {TOKEN}"


def test_get_issue_includes_comments_but_not_bots(forge: GitHubForge) -> None:
    issue = forge.get_issue(REPO, 7)
    assert (issue.title, issue.body, issue.author) == ("Crash on empty input", "Steps: run with ''", "alice")
    assert issue.labels == ("forgecrew", "forgecrew:queued")
    assert issue.comments == (IssueComment("bob", "Also happens on Windows"),)
    assert issue.url.endswith("/acme/widgets/issues/7")


@pytest.mark.parametrize(("role", "allowed"), [("admin", True), ("maintain", True), ("write", True),
                                               ("triage", False), ("read", False), ("none", False)])
def test_has_write_access(fake: FakeGitHub, forge: GitHubForge, role: str, allowed: bool) -> None:
    fake.set_permission(REPO, "carol", role)
    assert forge.has_write_access(REPO, "carol") is allowed


def test_comment(fake: FakeGitHub, forge: GitHubForge) -> None:
    forge.comment(REPO, 7, "Working on it")
    assert fake.issue(REPO, 7).comments[-1]["body"] == "Working on it"


def test_status_label_moves_and_is_idempotent(fake: FakeGitHub, forge: GitHubForge) -> None:
    forge.set_status_label(REPO, 7, StatusLabel.WORKING)
    assert fake.issue(REPO, 7).labels == ["forgecrew", "forgecrew:working"]
    writes = len(fake.calls("POST")) + len(fake.calls("DELETE"))
    forge.set_status_label(REPO, 7, StatusLabel.WORKING)
    assert len(fake.calls("POST")) + len(fake.calls("DELETE")) == writes


def test_status_label_ignores_label_already_removed(fake: FakeGitHub, forge: GitHubForge) -> None:
    fake.fail_next("DELETE", r"/labels/", 404, body={"message": "Label does not exist",
                                                     "documentation_url": "https://docs.github.com/rest"})
    forge.set_status_label(REPO, 7, StatusLabel.PR_OPEN)
    assert "forgecrew:pr-open" in fake.issue(REPO, 7).labels


def test_open_or_update_pr_twice_keeps_one_pr(fake: FakeGitHub, forge: GitHubForge) -> None:
    first = forge.open_or_update_pr(REPO, branch="forgecrew/7-crash", base="main", title="Fix crash",
                                    body="Closes #7", draft=True)
    second = forge.open_or_update_pr(REPO, branch="forgecrew/7-crash", base="main", title="Fix the crash",
                                     body="Closes #7, with tests", draft=True)
    assert (first.created, second.created) == (True, False)
    assert first.number == second.number and first.draft
    [pull] = fake.pulls(REPO)
    assert (pull.title, pull.body, pull.draft, pull.head, pull.base) == (
        "Fix the crash", "Closes #7, with tests", True, "forgecrew/7-crash", "main")
    assert fake.calls("GET", r"/pulls$")[0].query == {"state": "open", "head": "acme:forgecrew/7-crash"}
    assert second.url.endswith(f"/acme/widgets/pull/{first.number}")


def test_pull_request_label_added_then_removed_without_repeat_writes(fake: FakeGitHub, forge: GitHubForge) -> None:
    info = forge.open_or_update_pr(REPO, branch="forgecrew/9-x", base="main", title="t", body="b", draft=True)
    forge.label_pull_request(REPO, info.number, "forgecrew:tests-failing", True)
    forge.label_pull_request(REPO, info.number, "forgecrew:tests-failing", True)
    assert fake.pulls(REPO)[0].labels == ["forgecrew:tests-failing"]
    assert len(fake.calls("POST", rf"/issues/{info.number}/labels$")) == 1
    forge.label_pull_request(REPO, info.number, "forgecrew:tests-failing", False)
    assert fake.pulls(REPO)[0].labels == []
    assert fake.violations == []


def test_ready_pr_is_not_a_draft(fake: FakeGitHub, forge: GitHubForge) -> None:
    info = forge.open_or_update_pr(REPO, branch="forgecrew/ready", base="main", title="t", body="b", draft=False)
    assert info.draft is False and fake.pulls(REPO)[0].draft is False


def test_update_moves_the_base_only_when_it_changed(fake: FakeGitHub, forge: GitHubForge) -> None:
    for base in ("main", "main", "release"):
        forge.open_or_update_pr(REPO, branch="forgecrew/base", base=base, title="t", body="b", draft=False)
    assert [r.body for r in fake.calls("PATCH")] == [{"title": "t", "body": "b"},
                                                     {"title": "t", "body": "b", "base": "release"}]
    assert fake.pulls(REPO)[0].base == "release"


def test_pr_opened_concurrently_is_updated_not_duplicated(fake: FakeGitHub, forge: GitHubForge) -> None:
    forge.open_or_update_pr(REPO, branch="forgecrew/race", base="main", title="t", body="b", draft=False)
    fake.fail_next("GET", r"/pulls$", 200, body=[])  # the list misses the PR another worker just opened
    info = forge.open_or_update_pr(REPO, branch="forgecrew/race", base="main", title="t2", body="b2", draft=False)
    assert info.created is False and len(fake.pulls(REPO)) == 1 and fake.pulls(REPO)[0].title == "t2"


def test_secondary_rate_limit_retry_after_is_honoured(fake: FakeGitHub) -> None:
    forge = GitHubForge(_settings(fake.api_url), write_interval=0)  # real sleep: retry-after is 1 s
    fake.fail_next("POST", r"/issues/7/comments$", 403, {"Retry-After": "1"}, SECONDARY)
    forge.comment(REPO, 7, "after the limit")
    first, second = fake.calls("POST", r"/comments$")
    assert (first.status, second.status) == (403, 201)
    assert second.at - first.at >= 0.95
    assert [c["body"] for c in fake.issue(REPO, 7).comments].count("after the limit") == 1


def test_secondary_rate_limit_without_retry_after_waits(fake: FakeGitHub, sleeps: list[float]) -> None:
    forge = GitHubForge(_settings(fake.api_url), write_interval=0, secondary_rate_wait=45, sleep=sleeps.append)
    fake.fail_next("POST", r"/labels$", 403, body=SECONDARY)
    forge.set_status_label(REPO, 7, StatusLabel.FAILED)
    assert sleeps == [45] and "forgecrew:failed" in fake.issue(REPO, 7).labels


@pytest.mark.parametrize("status", [403, 429])
def test_primary_rate_limit_waits_until_reset(fake: FakeGitHub, forge: GitHubForge, sleeps: list[float],
                                              status: int) -> None:
    reset = int(time.time()) + 42
    fake.fail_next("GET", rf"^/repos/{REPO}$", status,
                   {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
                   {"message": "API rate limit exceeded for user ID 1.", "documentation_url": "https://docs"})
    assert forge.default_branch(REPO) == "main"
    assert len(sleeps) == 1 and 40 <= sleeps[0] <= 44


def test_server_errors_are_retried(fake: FakeGitHub, forge: GitHubForge, sleeps: list[float]) -> None:
    fake.fail_next("GET", r"/issues/7$", 502, times=2)
    assert forge.get_issue(REPO, 7).number == 7
    assert [r.status for r in fake.calls("GET", r"/issues/7$")] == [502, 502, 200]


@pytest.mark.parametrize("status", [500, 502, 504])
def test_ambiguous_server_error_on_a_comment_is_not_repeated(fake: FakeGitHub, forge: GitHubForge,
                                                             sleeps: list[float], status: int) -> None:
    fake.fail_next("POST", r"/issues/7/comments$", status, after_serving=True)  # posted, answer lost
    with pytest.raises(ForgeError, match=str(status)):
        forge.comment(REPO, 7, "exactly once")
    assert [c["body"] for c in fake.issue(REPO, 7).comments].count("exactly once") == 1
    assert len(fake.calls("POST", r"/issues/7/comments$")) == 1 and sleeps == []


def test_comment_refused_with_503_and_retry_after_is_repeated(fake: FakeGitHub, forge: GitHubForge,
                                                              sleeps: list[float]) -> None:
    fake.fail_next("POST", r"/issues/7/comments$", 503, {"Retry-After": "2"})
    forge.comment(REPO, 7, "after the outage")
    assert [r.status for r in fake.calls("POST", r"/issues/7/comments$")] == [503, 201]
    assert sleeps == [2] and [c["body"] for c in fake.issue(REPO, 7).comments].count("after the outage") == 1


def test_pull_request_created_but_answered_502_is_found_not_duplicated(fake: FakeGitHub,
                                                                       forge: GitHubForge) -> None:
    fake.fail_next("POST", r"/pulls$", 502, after_serving=True)
    info = forge.open_or_update_pr(REPO, branch="forgecrew/lost", base="main", title="t", body="b", draft=False)
    assert info.created is True and [p.number for p in fake.pulls(REPO)] == [info.number]
    assert len(fake.calls("POST", r"/pulls$")) == 1


def test_rate_limit_that_does_not_end_becomes_forge_error(fake: FakeGitHub, sleeps: list[float]) -> None:
    forge = GitHubForge(_settings(fake.api_url), write_interval=0, max_rate_limit_wait=60, sleep=sleeps.append)
    reset = int(time.time()) + 3000
    fake.fail_next("GET", r"/issues/7$", 403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
                   {"message": "API rate limit exceeded for user ID 1.", "documentation_url": "https://docs"})
    with pytest.raises(ForgeError, match="rate limit") as caught:
        forge.get_issue(REPO, 7)
    assert TOKEN not in str(caught.value) and sleeps == []


def test_missing_repository_is_an_actionable_error(forge: GitHubForge) -> None:
    with pytest.raises(ForgeError, match="repository acme/missing not found or the token cannot see it"):
        forge.default_branch("acme/missing")
    with pytest.raises(ForgeError, match="issue #99 not found in acme/widgets"):
        forge.get_issue(REPO, 99)


def test_bad_token_error_names_the_setting_not_the_token(fake: FakeGitHub) -> None:
    wrong = "ghp_wrongTokenAlsoSecret987"
    forge = GitHubForge(_settings(fake.api_url, github_token=wrong), write_interval=0)
    with pytest.raises(ForgeError, match="FORGECREW_GITHUB_TOKEN") as caught:
        forge.comment(REPO, 7, "hi")
    assert wrong not in str(caught.value) and wrong not in repr(caught.value.__cause__)


def test_token_never_reaches_the_logs(fake: FakeGitHub, forge: GitHubForge,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="github")  # PyGithub pins its logger at INFO
    fake.fail_next("GET", r"/issues/7$", 500)
    forge.get_issue(REPO, 7)
    forge.set_status_label(REPO, 7, StatusLabel.PR_OPEN)
    forge.git_credential(REPO)
    with pytest.raises(ForgeError):
        forge.default_branch("acme/missing")
    assert "Authorization" in caplog.text and TOKEN not in caplog.text


def test_validation_error_is_reported(fake: FakeGitHub, forge: GitHubForge) -> None:
    fake.fail_next("POST", r"/pulls$", 422, body={
        "message": "Validation Failed", "documentation_url": "https://docs.github.com",
        "errors": [{"resource": "PullRequest", "code": "custom", "message": "No commits between main and x"}]})
    with pytest.raises(ForgeError, match="No commits between main and x"):
        forge.open_or_update_pr(REPO, branch="x", base="main", title="t", body="b", draft=False)


def test_clone_url_holds_no_token_and_the_credential_is_for_the_clone_host_only(fake: FakeGitHub,
                                                                              forge: GitHubForge) -> None:
    url = forge.clone_url(REPO)
    assert url == f"{fake.api_url}/acme/widgets.git" and TOKEN not in url
    credential = forge.git_credential(REPO)
    assert credential == GitCredential(fake.api_url, "x-access-token", TOKEN) and TOKEN not in repr(credential)


def test_clone_url_template_and_enterprise_hosts(fake: FakeGitHub) -> None:
    templated = GitHubForge(_settings(fake.api_url, clone_url_template="file:///srv/git/{owner}/{name}.git"))
    assert templated.clone_url(REPO) == "file:///srv/git/acme/widgets.git"
    assert templated.git_credential(REPO) is None
    assert web_base("https://api.github.com") == "https://github.com"
    assert web_base("https://ghe.example.com/api/v3/") == "https://ghe.example.com"
    leaky = GitHubForge(_settings(fake.api_url, clone_url_template="https://u:p@git.example/{full_name}.git"))
    with pytest.raises(SettingsError):
        leaky.clone_url(REPO)


class _AuthChallenge(BaseHTTPRequestHandler):
    """Answers 401 until git sends Basic credentials, then records them."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        header = self.headers.get("Authorization", "")
        self.seen.append(header)
        self.send_response(404 if header else 401)
        if not header:
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_git_gets_the_token_from_the_helper_and_sends_it_only_as_a_header(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AuthChallenge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}"
        forge = GitHubForge(_settings(api))
        subprocess.run(["git", "init", "-q", str(tmp_path / "work")], check=True)
        run_git(["-C", str(tmp_path / "work"), "fetch", forge.clone_url(REPO)], credential=forge.git_credential(REPO),
                timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert f"Basic {base64.b64encode(f'x-access-token:{TOKEN}'.encode()).decode()}" in _AuthChallenge.seen
    stored = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert stored == []


@pytest.fixture(scope="module")
def app_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def _app_settings(api_url: str, key: str) -> Settings:
    return Settings(forge="github", github_app_id=4242, github_app_private_key=key, github_api_url=api_url)


def test_app_auth_mints_an_installation_token_and_caches_it(app_key: tuple[str, str]) -> None:
    private, public = app_key
    with FakeGitHub(app_id=4242, app_public_key=public) as fake:
        fake.add_installation(99)
        fake.add_repo(REPO)
        fake.add_issue(REPO, 1, "t")
        forge = GitHubForge(_app_settings(fake.api_url, private), write_interval=0).for_installation(99)
        assert forge.default_branch(REPO) == "main"
        forge.comment(REPO, 1, "hello from the app")
        credential = forge.git_credential(REPO)
        assert len(fake.minted) == 1
        token = fake.minted[0]["token"]
        assert fake.calls("POST", r"/access_tokens$")[0].headers["authorization"].startswith("Bearer ")
        assert fake.calls("GET", r"^/repos/")[0].headers["authorization"] == f"token {token}"
        assert fake.issue(REPO, 1).comments[-1]["login"] == "forgecrew[bot]"
        assert credential is not None and credential.password == token
        assert fake.violations == []


def test_token_mint_is_repeated_after_a_server_error(app_key: tuple[str, str]) -> None:
    private, public = app_key
    with FakeGitHub(app_id=4242, app_public_key=public) as fake:
        fake.add_installation(99)
        fake.add_repo(REPO)
        fake.fail_next("POST", r"/access_tokens$", 502)
        forge = GitHubForge(_app_settings(fake.api_url, private), 99, write_interval=0, sleep=lambda s: None)
        assert forge.default_branch(REPO) == "main"
        assert [r.status for r in fake.calls("POST", r"/access_tokens$")] == [502, 201]


def test_app_token_is_reminted_near_expiry(app_key: tuple[str, str], tmp_path: Path) -> None:
    private, public = app_key
    key_file = tmp_path / "app.pem"
    key_file.write_text(private)
    with FakeGitHub(app_id=4242, app_public_key=public, token_lifetime=300) as fake:  # < 10 min left
        fake.add_installation(99)
        fake.add_repo(REPO)
        forge = GitHubForge(_app_settings(fake.api_url, str(key_file)), 99, write_interval=0)
        first = forge.git_credential(REPO)
        assert forge.default_branch(REPO) == "main"
        second = forge.git_credential(REPO)
        assert len(fake.minted) == 3 and first != second
        assert fake.calls("GET", r"^/repos/")[0].headers["authorization"] == f"token {fake.minted[1]['token']}"
        assert fake.violations == []


def test_app_auth_errors_are_actionable(app_key: tuple[str, str]) -> None:
    private, public = app_key
    with FakeGitHub(app_id=4242, app_public_key=public) as fake:
        fake.add_repo(REPO)
        without_installation = GitHubForge(_app_settings(fake.api_url, private))
        with pytest.raises(ForgeError, match="FORGECREW_GITHUB_APP_INSTALLATION_ID"):
            without_installation.default_branch(REPO)
        fake.add_installation(77)
        configured = _app_settings(fake.api_url, private).model_copy(update={"github_app_installation_id": 77})
        assert GitHubForge(configured, write_interval=0).default_branch(REPO) == "main"  # e.g. forgecrew run
        with pytest.raises(ForgeError, match="installation 5 .*still installed"):
            without_installation.for_installation(5).default_branch(REPO)
        wrong_app = GitHubForge(Settings(github_app_id=1, github_app_private_key=private,
                                         github_api_url=fake.api_url), 5)
        with pytest.raises(ForgeError, match="401"):
            wrong_app.token()
    garbled = "-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n"
    with pytest.raises(SettingsError, match="not a usable RSA private key"):
        GitHubForge(_app_settings("http://127.0.0.1:9", garbled), 1).token()
    with pytest.raises(SettingsError, match="neither PEM text nor"):
        GitHubForge(_app_settings("http://127.0.0.1:9", "/no/such/key.pem"), 1)
    with pytest.raises(SettingsError, match="FORGECREW_GITHUB_TOKEN"):
        GitHubForge(Settings(github_api_url="http://127.0.0.1:9"))


def test_fake_flags_requests_outside_the_description(fake: FakeGitHub) -> None:
    headers = {"Authorization": f"token {TOKEN}"}
    bad = requests.post(f"{fake.api_url}/repos/{REPO}/pulls", json={"head": 1, "base": "main"}, headers=headers,
                        timeout=5)
    unknown = requests.get(f"{fake.api_url}/repos/{REPO}/branches", headers=headers, timeout=5)
    assert (bad.status_code, unknown.status_code) == (422, 404)
    assert unknown.json()["message"] == "Not Found"
    assert len(fake.violations) == 2
    fake.violations.clear()


def test_make_forge_picks_the_adapter(fake: FakeGitHub, tmp_path: Path) -> None:
    assert isinstance(make_forge(_settings(fake.api_url), write_interval=0), GitHubForge)
    local = Settings(forge="local", local_forge_root=tmp_path)
    assert isinstance(make_forge(local, installation_id=3), LocalForge)


def test_draft_is_marked_ready_for_review_through_graphql(fake: FakeGitHub, forge: GitHubForge) -> None:
    info = forge.open_or_update_pr(REPO, branch="forgecrew/ready-later", base="main", title="t", body="b",
                                   draft=True)
    forge.mark_ready_for_review(REPO, info.number)
    assert fake.pulls(REPO)[0].draft is False
    [mutation] = fake.calls("POST", r"^/graphql$")
    assert "markPullRequestReadyForReview" in mutation.body["query"]
    assert mutation.headers["authorization"] == f"token {TOKEN}"
    forge.mark_ready_for_review(REPO, info.number)  # already ready: no second mutation
    assert len(fake.calls("POST", r"^/graphql$")) == 1 and fake.violations == []


def test_marking_a_missing_pull_request_ready_is_a_forge_error(forge: GitHubForge) -> None:
    with pytest.raises(ForgeError, match="ready for review"):
        forge.mark_ready_for_review(REPO, 404)
