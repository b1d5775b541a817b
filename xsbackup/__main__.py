from xsbackup.cli.main import main

main()
