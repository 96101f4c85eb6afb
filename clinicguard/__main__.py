from clinicguard.cli import main

main()
