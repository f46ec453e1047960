from mbp_cli.cli import run

run()
