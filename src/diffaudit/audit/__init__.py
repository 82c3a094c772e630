"""The audit: explainability (how the model reaches an image), fairness (whom it represents) and privacy
(whether it copies its training data), with release gates."""
