from freehand3d.cli import main

main()
