"""Logging as every entry point sets it up."""

import logging

import pytest

from common.logs import CHATTY_LOGGERS, configure_logging


@pytest.fixture
def restored_levels():
    yield
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_third_party_request_logging_stays_at_warnings_unless_verbose(restored_levels):
    request_logger = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    configure_logging()
    assert not request_logger.isEnabledFor(logging.INFO) and request_logger.isEnabledFor(logging.WARNING)
    configure_logging(verbose=True)
    assert request_logger.isEnabledFor(logging.INFO)
