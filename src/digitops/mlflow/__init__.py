"""MLflow backend: runs and model versions in an MLflow server or GitLab's MLflow-compatible API.

The client speaks the MLflow REST API through ``requests`` and uses only the
endpoints GitLab documents ("MLflow client compatibility"), so the same code
serves ``mlflow server`` and GitLab's built-in experiment tracking and model registry.
"""
