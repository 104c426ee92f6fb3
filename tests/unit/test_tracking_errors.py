"""What a command says when MLflow cannot reach its tracking server."""

from mlflow.exceptions import MlflowException

from common.tracking import unreachable_tracking


def test_an_unanswered_request_is_named_with_the_server_and_the_cause_and_other_errors_are_left_alone():
    refused = MlflowException(
        "API request to http://127.0.0.1:9/api/2.0/mlflow/experiments/get-by-name failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded (Caused by NewConnectionError('refused'))"
    )
    message = unreachable_tracking(refused)
    assert message.startswith("the MLflow tracking server at http://127.0.0.1:9 did not answer (NewConnectionError('refused')")
    assert unreachable_tracking(MlflowException("RESOURCE_DOES_NOT_EXIST: Registered Model 'x' not found")) is None
    assert unreachable_tracking(ValueError("failed with exception x")) is None
