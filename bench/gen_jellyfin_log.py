"""
Generate a realistic Jellyfin file-sink log for benchmarks: mostly playback, session,
library and HTTP noise, with about 8% authentication lines (failures from a few
attackers and many scattered clients, successes, a lockout now and then).

    python bench/gen_jellyfin_log.py 1000000 /tmp/log_20260102.log [START]

START: the first line's time (ISO 8601 with offset; default 2026-01-02T00:00:00+00:00).
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime, timedelta

UM = "Jellyfin.Server.Implementations.Users.UserManager"
NOISE = [
    ("INF", "Emby.Server.Implementations.Session.SessionManager",
     'Playback stopped reported by app "Jellyfin Web" "10.11.{n}" playing "Episode {n}". Stopped at "{m}" ms'),
    ("INF", "Jellyfin.Api.Helpers.MediaInfoHelper",
     'User policy for "{u}". EnablePlaybackRemuxing: True EnableVideoPlaybackTranscoding: True'),
    ("INF", "MediaBrowser.MediaEncoding.Transcoding.TranscodeManager",
     '"/usr/lib/jellyfin-ffmpeg/ffmpeg" "-analyzeduration 200M -i file:\\"/media/tv/Show {n}/S01E0{d}.mkv\\""'),
    ("INF", "Emby.Server.Implementations.ScheduledTasks.TaskManager",
     '"Scan Media Library" Completed after {d} minute(s) and {n} seconds'),
    ("WRN", "Microsoft.AspNetCore.Server.Kestrel",
     "As of \\\"{ts}\\\", the heartbeat has been running for \\\"00:00:0{d}.6\\\""),
    ("INF", "Emby.Server.Implementations.Session.SessionManager",
     'Current/Max sessions for user "{u}": {d}/0'),
    ("ERR", "Jellyfin.Api.Middleware.ExceptionMiddleware",
     'Error processing request. URL "GET" "/Items/{n}/Images/Primary".'),
]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


def main(count: int, path: str, start: datetime = datetime(2026, 1, 2, tzinfo=UTC)) -> None:
    rng = random.Random(42)
    t = start.astimezone(UTC)
    attackers = [f"203.0.113.{i}" for i in range(1, 40)] + [f"2001:db8::{i:x}" for i in range(1, 20)]
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            t += timedelta(milliseconds=rng.randint(5, 120))
            head = f"[{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d} +00:00]"
            r = rng.random()
            if r < 0.055:
                ip = rng.choice(attackers) if rng.random() < 0.7 else f"198.51.100.{rng.randint(1, 254)}"
                user = rng.choice(USERS + ["admin", "root", "test", "guest"])
                msg = f'Authentication request for "{user}" has been denied (IP: "{ip}").'
                line = f"{head} [INF] [{i % 90}] {UM}: {msg}"
            elif r < 0.075:
                line = f'{head} [INF] [{i % 90}] {UM}: Authentication request for "{rng.choice(USERS)}" has succeeded.'
            elif r < 0.078:
                line = (f"{head} [INF] [{i % 90}] {UM}: Authentication request for "
                        f'"{rng.choice(USERS)}" has been denied because this account is currently disabled '
                        f'(IP: "198.51.100.{rng.randint(1, 254)}").')
            elif r < 0.0785:
                line = f'{head} [WRN] [{i % 90}] {UM}: Disabling user "{rng.choice(USERS)}" due to 3 unsuccessful login attempts.'
            elif r < 0.08:
                line = (f'{head} [INF] [{i % 90}] Jellyfin.Api.Auth.CustomAuthenticationHandler: '
                        '"CustomAuthentication" was not authenticated. Failure message: "Invalid token."')
            else:
                lvl, ctx, tpl = rng.choice(NOISE)
                msg = tpl.format(n=rng.randint(1, 99999), m=rng.randint(1, 10**7), d=rng.randint(1, 9),
                                 u=rng.choice(USERS), ts=t.isoformat())
                line = f"{head} [{lvl}] [{i % 90}] {ctx}: {msg}"
            out.write(line + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *(datetime.fromisoformat(a) for a in sys.argv[3:4]))
