"""What every test shares: the pass results of the dashboards they open go to a throwaway cache folder,
never to the user's own cache."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def throwaway_user_cache(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
    yield
    patch.undo()
