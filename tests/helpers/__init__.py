"""Helpers the tests import (tests.helpers.config, tests.helpers.release); fixtures live in
tests/conftest.py."""
