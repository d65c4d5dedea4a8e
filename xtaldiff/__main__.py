from xtaldiff.cli import main

main()
