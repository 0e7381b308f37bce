"""What every test shares: the pass results of the dashboards they open go to a throwaway cache folder,
never to the user's own cache; and the cases of parametrized tests that take many seconds are marked slow."""

import pytest

# Cases that `make test-fast` leaves out while the other cases of the same tests stay in it (a whole test
# that takes many seconds is marked slow where it is defined). The seconds each took on the 2-core machine,
# busy with other work:
SLOW_CASES = {
    "tests/test_cut.py::test_the_cut_at_a_classifiers_input_gives_the_embeddings_and_the_logits[densenet121-classifier]": 24,
    "tests/test_cut.py::test_the_cut_gives_the_layers_output_and_gradient[densenet121-features.denseblock4.denselayer3]": 20,
    "tests/methods/test_cams.py::test_map_correlates_with_pytorch_grad_cam[score-cam-efficientnet]": 26,
    "tests/methods/test_cams.py::test_map_correlates_with_pytorch_grad_cam[score-cam-resnet18]": 11,
    "tests/methods/test_filters.py::test_digits_patterns_are_not_pinned_to_black_and_white[classifier]": 21,
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.nodeid in SLOW_CASES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def throwaway_user_cache(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
    yield
    patch.undo()
