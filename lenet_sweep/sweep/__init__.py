"""The Optuna sweeper's logic; ``hydra_plugins.lenet_sweep_optuna`` only forwards here."""
