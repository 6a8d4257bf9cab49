from common.settings import Settings, SpecialtyConfig
from common.specialties import profiles, queue_names, time_limits
from coordinator.triage import RuleTriage, mentioned_paths


def triage(**kwargs):  # type: ignore[no-untyped-def]
    return RuleTriage(profiles(Settings()))(**{"title": "", "body": "", "labels": [], **kwargs})


def test_route_label_wins_over_rules() -> None:
    decision = triage(title="CSS button broken", labels=["forgecrew", "forgecrew:devops"])
    assert decision.specialty == "devops"
    assert "forgecrew:devops" in decision.reason


def test_status_labels_do_not_route() -> None:
    assert triage(title="x", labels=["forgecrew:queued", "forgecrew:failed"]).specialty == "general"


def test_keywords_and_paths_pick_a_specialty_with_reason() -> None:
    frontend = triage(title="Button misaligned on the settings page")
    assert frontend.specialty == "frontend" and "button" in frontend.reason
    devops = triage(title="Build fails", body="see .github/workflows/ci.yml line 3")
    assert devops.specialty == "devops" and ".github/workflows/ci.yml" in devops.reason
    testing = triage(title="Flaky test in tests/test_api.py")
    assert testing.specialty == "testing"
    backend = triage(title="500 from the /users endpoint", body="traceback in app/models.py")
    assert backend.specialty == "backend"


def test_nothing_matches_falls_back_to_general() -> None:
    decision = triage(title="Spelling in the contributors list")
    assert decision.specialty == "general"
    assert "fallback" in decision.reason


def test_links_are_not_paths() -> None:
    assert mentioned_paths("see https://example.com/a/b.html and src/x.py") == ["src/x.py"]


def test_configured_specialty_routes_and_has_a_queue() -> None:
    settings = Settings(specialties=[SpecialtyConfig(name="docs", keywords=["documentation"],
                                                     labels=["documentation"], time_limit=900,
                                                     soft_time_limit=600)])
    assert queue_names(settings)[-1] == "general"
    assert "docs" in queue_names(settings)
    rules = RuleTriage(profiles(settings))
    assert rules(title="Improve documentation of setup", body="", labels=[]).specialty == "docs"
    assert rules(title="x", body="", labels=["forgecrew:docs"]).specialty == "docs"
    assert time_limits(settings, "docs") == (600, 900)
