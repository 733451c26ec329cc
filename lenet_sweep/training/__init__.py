"""One training run, alone or as an unpacked sweep trial: :mod:`.train` (data, model, fit, evaluate),
:mod:`.record` (what its MLflow run records, and its end), :mod:`.runtime` (its phases and what a
process's runs share), :mod:`.checkpoint` (its resume point) and :mod:`.figures` (its pictures)."""
