import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_dir(tmp_path_factory):
    """Keep a developer's ~/.cache/advisor/fitted.json out of the tests: only shipped data counts."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ADVISOR_HOME", str(tmp_path_factory.mktemp("advisor-home")))
    yield
    mp.undo()
