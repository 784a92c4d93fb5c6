import pytest

from command_dispatch import Dispatcher


@pytest.fixture
def r():
    return Dispatcher()
