from listener.cli.main import main

main(prog_name="listener")
