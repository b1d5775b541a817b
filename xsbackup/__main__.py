from xsbackup.cli.entry import main

main()
