"""tests/deployment needs PostgreSQL and Redis on this machine; without them it skips (or, under
BONITO_REQUIRE_SERVICES=1 as in .ci/run, fails) with a message naming what is missing."""

from deployment import stack


def test_services_down_names_each_missing_service(monkeypatch):
    monkeypatch.setattr(stack, "POSTGRES_ADMIN", "host=127.0.0.1 port=1 user=postgres dbname=postgres")
    monkeypatch.setattr(stack, "REDIS_PORT", 1)
    assert stack.services_down() == ["PostgreSQL on 127.0.0.1:5432 (user postgres)", "Redis on 127.0.0.1:1"]


def test_ci_requires_the_services_and_the_browser():
    from conftest import REPO

    ci = (REPO / ".ci" / "run").read_text()
    assert "export BONITO_REQUIRE_SERVICES=1" in ci and "export BONITO_REQUIRE_BROWSER=1" in ci
