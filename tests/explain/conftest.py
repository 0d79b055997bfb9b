from tests.explain.indexes import explain_index, one_torch_thread  # noqa: F401 - fixtures
