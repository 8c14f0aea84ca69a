"""The pipeline's stages: each joins the workspace to the modules that do the work, so the Python API
(autoseg.api) and the command line (autoseg.cli) run a stage the same way."""
