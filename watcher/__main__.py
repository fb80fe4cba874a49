from watcher.cli import app

app()
