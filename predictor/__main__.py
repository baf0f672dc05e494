from predictor.cli import main

main()
