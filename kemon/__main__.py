from kemon.cli import main

main()
