from lpirc.cli import main

main()
