"""Posterior-collapse remedies as parts of the model, each in its own file with a config part in
`configs/remedies/` that stacks on any experiment (`docs/remedies.md`)."""
