from vostrack.cli import main

main()
