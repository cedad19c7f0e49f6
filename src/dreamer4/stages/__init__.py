"""One module per pipeline stage; each is a `dreamer4 <stage>` subcommand run by dvc.yaml."""
