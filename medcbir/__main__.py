from medcbir.cli.main import entry

entry()
