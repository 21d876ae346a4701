from listener.cli import main

main(prog_name="listener")
