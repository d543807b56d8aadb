"""What a sweep answers: the report and its figures, the ablation table, effects, views, confirmation."""
