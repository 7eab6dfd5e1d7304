"""The integration guide's entry point: `python main.py --mode api --port 8000` (same as app.py)."""

from app import main

if __name__ == "__main__":
    main()
