from tests.engine.indexes import flat_index, small_encoder  # noqa: F401 - fixtures
