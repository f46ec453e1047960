"""Training of the consensus network: ground-truth targets, losses and the initialisation recipe."""
