"""The submission: the winner's refit, the predictor that serves a saved model, scoring of predictions."""
