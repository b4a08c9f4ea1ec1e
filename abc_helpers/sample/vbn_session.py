"""The VBN generator's session content: what happens in one synthetic ecephys session.

Everything here is **synthetic**, drawn from a random generator seeded by the session id. It follows
the shape of a real Visual Behavior Neuropixels session, shortened to a few minutes so that the
sample files stay small (:data:`TIMELINE`):

* block 0, change detection with natural images (``Natural_Images_Lum_Matched_set_ophys_<G|H>_2019``):
  an image flashes for 250 ms every 750 ms; after a few flashes it changes (a *go* trial) or a sham
  change is drawn (a *catch* trial); a lick within the response window after a change is a hit and
  is rewarded, none is a miss; licks before the change abort the trial; 5 % of the other flashes are
  omitted; the first trials are rewarded automatically;
* blocks 1 and 3, ``spontaneous`` (grey screen); block 2, receptive-field gabors
  (``gabor_20_deg_250ms``, 9 x 9 positions); block 4, full-field flashes (``flash_250ms``);
  block 5, the passive replay of the start of block 0 (no licks, no rewards);
* then optotagging (square pulses and raised-cosine ramps of blue light);
* running speed, the wheel encoder's voltages, a little eye tracking (the first 30 s), and one
  spike train per unit: a refractory period of 2 ms, the unit's ``firing_rate`` (``units.csv``) as
  its mean rate, times on a 2**15 Hz clock (:data:`SPIKE_CLOCK_HZ`), and responses: units in visual areas respond to image flashes (more to a change,
  most on hits), gabors near their receptive field and flashes; some units of Cre mice to light.

The writer of the NWB files (:mod:`.vbn_nwb`) stores these tables as the AllenSDK's VBN files do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Frame rate of the stimulus monitor (Hz).
FRAME_RATE = 60.0
#: Delay between a frame's command and its display (s), already in the stimulus timestamps.
MONITOR_DELAY = 0.02
#: Seconds of each block, in order: (stimulus_block, stimulus name or None for the image set, seconds).
TIMELINE: tuple[tuple[int, str | None, float], ...] = (
    (0, None, 90.0), (1, "spontaneous", 3.0), (2, "gabor_20_deg_250ms", 20.25),
    (3, "spontaneous", 3.0), (4, "flash_250ms", 9.0), (5, None, 15.0))
#: Seconds of optotagging after the last block.
OPTO_SECONDS = 12.0
#: The images of each image set (the real sets' names).
IMAGE_SETS = {
    "G": ("im012_r", "im036_r", "im044_r", "im047_r", "im078_r", "im083_r", "im111_r", "im115_r"),
    "H": ("im005_r", "im024_r", "im034_r", "im083_r", "im087_r", "im104_r", "im111_r", "im114_r"),
}
#: Pixel size of the sample's stimulus templates (rows, columns): the real 1200 x 1920, shrunk 20 x.
TEMPLATE_SHAPE = (60, 96)
#: Shortest interval between two spikes of a unit (s).
REFRACTORY_S = 0.002
#: The clock of the spike times (Hz): times fall on this grid. 2**15 Hz, close to the probes' 30 kHz, puts
#: the times on a binary grid, so that they compress about 2.7 times better (the sample files stay small).
SPIKE_CLOCK_HZ = 32_768.0
#: Seconds of eye tracking (60 Hz camera) at the start of the session.
EYE_SECONDS = 30.0
#: The response window after a change (s) and the reward volumes (mL).
RESPONSE_WINDOW = (0.15, 0.75)
#: Number of samples of a mean waveform (30 kHz).
WAVEFORM_SAMPLES = 82
#: An image flash lasts FLASH_ON_S, and one starts every FLASH_PERIOD_S (s), as in the real task.
FLASH_ON_S, FLASH_PERIOD_S = 0.25, 0.75


def image_set_name(image_set: str) -> str:
    """Return the stimulus name of an image set (``'G'`` -> ``'Natural_Images_Lum_Matched_set_ophys_G_2019'``)."""
    return f"Natural_Images_Lum_Matched_set_ophys_{image_set}_2019"


@dataclass
class SessionContent:
    """Everything one session's NWB file holds besides the tables of ``project_metadata``.

    Attributes are plain arrays and DataFrames in the layout the AllenSDK writes (see each one).
    """

    stimulus_timestamps: np.ndarray
    presentations: pd.DataFrame
    templates: dict[str, tuple[np.ndarray, np.ndarray]]
    trials: pd.DataFrame
    licks: pd.DataFrame
    rewards: pd.DataFrame
    running: pd.DataFrame
    eye_tracking: pd.DataFrame
    optotagging: pd.DataFrame
    task_parameters: dict[str, object]
    spike_times: list[np.ndarray] = field(default_factory=list)
    spike_amplitudes: list[np.ndarray] = field(default_factory=list)
    waveforms: np.ndarray = field(default_factory=lambda: np.empty((0, WAVEFORM_SAMPLES)))


def _frames(seconds: float) -> int:
    return round(seconds * FRAME_RATE)


def stimulus_timestamps(rng: np.random.Generator) -> np.ndarray:
    """Return the display time of every stimulus frame (s): 60 Hz with a little jitter, delay included."""
    n = sum(_frames(s) for _, _, s in TIMELINE)
    start = 5.0 + float(rng.uniform(0, 1))  # the recording starts a few seconds before the stimulus
    return np.round(start + MONITOR_DELAY + np.arange(n) / FRAME_RATE + rng.normal(0, 2e-4, n), 6)


def _template_images(names: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Small synthetic 'natural' images, warped (uint8) and unwarped (float, NaN where hidden).

    Each image's pixels are drawn from a generator seeded by its name (the same image looks the same
    in every session): smooth blobs over a little noise. The unwarped image is the warped one
    resampled through a spherical-looking distortion, with the corners the warp hides set to NaN.
    """
    rows, cols = TEMPLATE_SHAPE
    y, x = np.mgrid[0:rows, 0:cols]
    u, v = (x - cols / 2) / (cols / 2), (y - rows / 2) / (rows / 2)
    r = np.hypot(u, v)
    hidden = r > 1.15
    out = {}
    for name in names:
        rng = np.random.default_rng(int(name[2:5]) + 7919)
        image = np.full((rows, cols), 110.0)
        for _ in range(6):
            cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
            sy, sx = rng.uniform(4, 18), rng.uniform(4, 24)
            image += rng.uniform(-90, 110) * np.exp(-((y - cy) / sy) ** 2 - ((x - cx) / sx) ** 2)
        image += rng.normal(0, 6, image.shape)
        warped = np.clip(image, 0, 255).astype(np.uint8)
        src_y = np.clip(np.round(rows / 2 + v * (1 + 0.12 * r**2) * rows / 2), 0, rows - 1).astype(int)
        src_x = np.clip(np.round(cols / 2 + u * (1 + 0.12 * r**2) * cols / 2), 0, cols - 1).astype(int)
        unwarped = warped[src_y, src_x].astype(np.float32)
        unwarped[hidden] = np.nan
        out[name] = (warped, unwarped)
    return out


def _change_detection(rng: np.random.Generator, frames0: int, frames: int, images: tuple[str, ...],
                      novel: set[str]) -> tuple[list[dict], list[dict]]:
    """Draw block 0's flashes and trials (frames only; licks come later). Returns (flashes, trials)."""
    period, on = _frames(FLASH_PERIOD_S), _frames(FLASH_ON_S)
    flashes: list[dict] = []
    trials: list[dict] = []
    image = images[int(rng.integers(len(images)))]
    frame = frames0
    since_change = 0
    while True:
        start_frame = frame
        n_before = 2 + min(int(rng.geometric(0.45)), 6)  # flashes before the (sham) change
        n_after = 1
        if frame + (n_before + n_after + 1) * period > frames0 + frames:
            break
        trial = {"trial": len(trials), "start_frame": start_frame, "image": image}
        auto = len(trials) < 3
        catch = not auto and rng.random() < 0.15
        abort_at = int(rng.integers(1, n_before)) if not auto and rng.random() < 0.1 else None
        change_image = image if catch else str(rng.choice([i for i in images if i != image]))
        trial_flashes = []
        for k in range(n_before + 1 + n_after):
            if abort_at is not None and k > abort_at:
                break
            is_change = k == n_before
            shown = change_image if k >= n_before else image
            omitted = (not is_change and 0 < k < n_before - 1 and rng.random() < 0.05)
            since_change = 0 if (is_change and not catch) else since_change + 1
            trial_flashes.append({"start_frame": frame, "end_frame": frame + on,
                                  "image_name": "omitted" if omitted else shown, "omitted": omitted,
                                  "is_change": bool(is_change and not catch),
                                  "is_sham_change": bool(is_change and catch), "trials_id": trial["trial"],
                                  "flashes_since_change": since_change,
                                  "is_image_novel": (not omitted) and shown in novel})
            frame += period
        flashes.extend(trial_flashes)
        trial.update(stop_frame=frame, n_before=n_before, catch=catch, auto=auto,
                     aborted=abort_at is not None, change_image=change_image,
                     abort_frame=trial_flashes[-1]["start_frame"] if abort_at is not None else None,
                     change_frame=start_frame + n_before * period if abort_at is None else None)
        trials.append(trial)
        if abort_at is None and not catch:
            image = change_image
    return flashes, trials


def generate_session(session: pd.Series, units: pd.DataFrame, rng: np.random.Generator) -> SessionContent:
    """Draw the content of one session.

    Parameters
    ----------
    session : pandas.Series
        Its row of ``ecephys_sessions`` (``image_set``, ``experience_level``, ``session_type``, ...).
    units : pandas.DataFrame
        Its rows of ``units`` (``unit_id``, ``firing_rate``, ``structure_acronym``, ``amplitude``,
        ``quality``, ``probe_horizontal_position``, ...), in table order.
    rng : numpy.random.Generator
        The session's generator.
    """
    times = stimulus_timestamps(rng)
    image_set = str(session["image_set"])
    images = IMAGE_SETS[image_set]
    novel = set(images) - set(IMAGE_SETS["G" if image_set == "H" else "H"]) \
        if session["experience_level"] == "Novel" else set()
    volume = 0.005 if "5uL" in str(session["session_type"]) else 0.003
    starts = np.cumsum([0] + [_frames(s) for _, _, s in TIMELINE])
    block = {b: (int(starts[i]), _frames(s)) for i, (b, _, s) in enumerate(TIMELINE)}
    flashes, trial_rows = _change_detection(rng, *block[0], images, novel)
    rows = _presentations(rng, times, block, flashes, image_set)
    trials, licks, rewards, hit_of = _behaviour(rng, times, trial_rows, volume)
    rows["rewarded"] = rows["trials_id"].map(lambda t: hit_of.get(int(t), False)) & rows["is_change"]
    templates = _template_images(images)
    running = _running(rng, times)
    eye = _eye_tracking(rng, times)
    opto_start = float(times[-1]) + 2.0
    opto = _optotagging(rng, opto_start)
    task = {"stimulus_distribution": "geometric", "auto_reward_volume": 0.005,
            "stimulus_name": image_set_name(image_set), "blank_duration_sec": [0.5, 0.5],
            "omitted_flash_fraction": 0.05, "task": "change detection", "n_stimulus_frames": len(times),
            "stimulus": "images", "session_type": str(session["session_type"]), "reward_volume": volume,
            "response_window_sec": list(RESPONSE_WINDOW), "stimulus_duration_sec": FLASH_ON_S}
    content = SessionContent(stimulus_timestamps=times, presentations=rows, templates=templates,
                             trials=trials, licks=licks, rewards=rewards, running=running,
                             eye_tracking=eye, optotagging=opto, task_parameters=task)
    _spike_trains(content, units, session, rng, opto_start + OPTO_SECONDS)
    return content


def _presentations(rng: np.random.Generator, times: np.ndarray, block: dict[int, tuple[int, int]],
                   flashes: list[dict], image_set: str) -> pd.DataFrame:
    """The stimulus presentations of every block, one row per presentation, in time order."""
    name = image_set_name(image_set)
    on = _frames(FLASH_ON_S)
    parts = []
    active = pd.DataFrame(flashes).assign(stimulus_block=0, stimulus_name=name, active=True)
    parts.append(active)
    # block 5: the replay of the start of block 0, frame for frame
    start5, n5 = block[5]
    replay = active[active["start_frame"] < block[0][0] + n5 - on].copy()
    replay["start_frame"] += start5 - block[0][0]
    replay["end_frame"] += start5 - block[0][0]
    parts.append(replay.assign(stimulus_block=5, active=False, trials_id=-99))
    for b in (1, 3):
        s, n = block[b]
        parts.append(pd.DataFrame({"start_frame": [s], "end_frame": [s + n], "stimulus_block": b,
                                   "stimulus_name": "spontaneous"}))
    s2 = block[2][0]
    grid = np.arange(-40.0, 41.0, 10.0)
    px, py = np.meshgrid(grid, grid)
    order = rng.permutation(px.size)
    starts2 = s2 + np.arange(px.size) * on
    parts.append(pd.DataFrame({"start_frame": starts2, "end_frame": starts2 + on, "stimulus_block": 2,
                               "stimulus_name": "gabor_20_deg_250ms", "position_x": px.ravel()[order],
                               "position_y": py.ravel()[order],
                               "orientation": rng.choice([0.0, 45.0, 90.0], px.size),
                               "spatial_frequency": 0.08, "temporal_frequency": 4.0, "contrast": 0.8}))
    s4, n4 = block[4]
    starts4 = s4 + np.arange(0, n4 - on, _frames(1.5))
    parts.append(pd.DataFrame({"start_frame": starts4, "end_frame": starts4 + on, "stimulus_block": 4,
                               "stimulus_name": "flash_250ms",
                               "color": np.where(np.arange(len(starts4)) % 2 == 0, 1.0, -1.0)}))
    rows = pd.concat(parts, ignore_index=True, sort=False)
    last = len(times) - 1
    rows["start_time"] = times[rows["start_frame"].to_numpy()]
    ends = rows["end_frame"].to_numpy()
    rows["stop_time"] = np.where(ends <= last, times[np.minimum(ends, last)],
                                 times[last] + (ends - last) / FRAME_RATE)
    rows["duration"] = rows["stop_time"] - rows["start_time"]
    defaults = {"active": False, "is_change": False, "is_sham_change": False, "omitted": False,
                "is_image_novel": False, "trials_id": -99, "flashes_since_change": 0}
    for column, value in defaults.items():
        if column in rows:
            values = rows[column].astype(object)
            rows[column] = values.where(values.notna(), value).astype(type(value))
        else:
            rows[column] = value
    return rows.sort_values("start_time", kind="stable").reset_index(drop=True)


def _behaviour(rng: np.random.Generator, times: np.ndarray, trial_rows: list[dict],
               volume: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[int, bool]]:
    """Draw licks and rewards and build the trials table (the AllenSDK's VBN trial columns)."""
    rows, lick_times, rewards, hit_of = [], [], [], {}
    for t in trial_rows:
        start, stop = float(times[t["start_frame"]]), float(times[min(t["stop_frame"], len(times) - 1)])
        change = np.nan if t["change_frame"] is None else float(times[t["change_frame"]]) - MONITOR_DELAY
        licks: list[float] = []
        hit = miss = false_alarm = correct_reject = False
        reward_time, reward_volume, response_time = np.nan, 0.0, np.nan
        if t["aborted"]:
            licks = [float(times[t["abort_frame"]]) + float(rng.uniform(0.1, 0.5))]
        elif t["auto"]:
            reward_time, reward_volume = change + 0.15, 0.005
            licks = list(change + 0.4 + np.cumsum(rng.uniform(0.11, 0.16, 4)))
        else:
            responds = rng.random() < (0.2 if t["catch"] else 0.75)
            if responds:
                first = change + float(rng.uniform(0.3, 0.6))
                licks = list(first + np.concatenate([[0.0], np.cumsum(rng.uniform(0.11, 0.16, rng.integers(2, 7)))]))
                response_time = first
            if t["catch"]:
                false_alarm, correct_reject = responds, not responds
            else:
                hit, miss = responds, not responds
                if hit:
                    reward_time, reward_volume = response_time, volume
        if not np.isnan(reward_time):
            rewards.append({"volume": reward_volume, "timestamps": reward_time, "auto_rewarded": t["auto"]})
        licks = [x for x in licks if x < stop]
        lick_times.extend(licks)
        hit_of[t["trial"]] = hit
        go = not t["catch"] and not t["auto"] and not t["aborted"]
        rows.append({
            "start_time": start, "stop_time": stop, "initial_image_name": t["image"],
            "change_image_name": t["change_image"],
            "stimulus_change": bool(not t["catch"] and not t["aborted"]),
            "change_time_no_display_delay": change, "go": go,
            "catch": bool(t["catch"] and not t["aborted"]), "lick_times": np.array(licks),
            "response_time": response_time, "reward_time": reward_time, "reward_volume": reward_volume,
            "hit": hit, "false_alarm": false_alarm, "miss": miss, "correct_reject": correct_reject,
            "aborted": t["aborted"], "auto_rewarded": t["auto"],
            "change_frame": np.nan if t["change_frame"] is None else float(t["change_frame"]),
            "trial_length": stop - start})
    lick_array = np.array(sorted(lick_times))
    licks = pd.DataFrame({"timestamps": lick_array,
                          "frame": np.searchsorted(times, lick_array).astype(np.int64)})
    reward_frame = pd.DataFrame(rewards, columns=["volume", "timestamps", "auto_rewarded"])
    return pd.DataFrame(rows), licks, reward_frame, hit_of


def _running(rng: np.random.Generator, times: np.ndarray) -> pd.DataFrame:
    """Running speed (cm/s) at every stimulus frame: bouts of running and rest, smoothed.

    Columns: ``speed``, ``speed_unfiltered``, ``dx`` (cm per frame), ``v_sig`` (the encoder's
    voltage, wrapping at ``v_in``) and ``v_in``.
    """
    n = len(times)
    state = np.cumsum(rng.normal(0, 1, n // 60 + 2))
    target = np.clip(12 + 10 * np.tanh(state / 3), 0, None)
    speed_raw = np.interp(np.arange(n), np.arange(len(target)) * 60, target) + rng.normal(0, 3.0, n)
    kernel = np.ones(9) / 9
    speed = np.convolve(speed_raw, kernel, mode="same")
    dx = speed_raw / FRAME_RATE
    radius_cm = 6.5 * 2.54 / 2
    angle = np.cumsum(dx) / radius_cm
    v_in = np.round(4.95 + rng.normal(0, 0.005, n), 4)
    v_sig = np.round((angle % (2 * np.pi)) / (2 * np.pi) * v_in, 4)
    return pd.DataFrame({"timestamps": times, "speed": np.round(speed, 4),
                         "speed_unfiltered": np.round(speed_raw, 4), "dx": np.round(dx, 5),
                         "v_sig": v_sig, "v_in": v_in})


def _eye_tracking(rng: np.random.Generator, times: np.ndarray) -> pd.DataFrame:
    """Ellipse fits of the eye, pupil and corneal reflection at 60 Hz for :data:`EYE_SECONDS` s."""
    n = int(EYE_SECONDS * 60)
    t = np.round(times[0] - 1.0 + np.arange(n) / 60.0, 6)
    out = {"timestamps": t}
    drift = np.cumsum(rng.normal(0, 0.3, (n, 2)), axis=0)
    for part, (cx, cy, w, h) in {"cr": (300, 250, 8, 7), "eye": (310, 240, 120, 80),
                                 "pupil": (305, 245, 30, 28)}.items():
        scale = 1.0 if part != "pupil" else 1 + 0.15 * np.sin(np.arange(n) / 90)
        out[f"{part}_center_x"] = np.round(cx + drift[:, 0] + rng.normal(0, 0.5, n), 3)
        out[f"{part}_center_y"] = np.round(cy + drift[:, 1] + rng.normal(0, 0.5, n), 3)
        out[f"{part}_width"] = np.round(w * scale + rng.normal(0, 0.3, n), 3)
        out[f"{part}_height"] = np.round(h * scale + rng.normal(0, 0.3, n), 3)
        out[f"{part}_phi"] = np.round(rng.normal(0, 0.05, n), 4)
        out[f"{part}_area"] = np.round(np.pi * out[f"{part}_width"] * out[f"{part}_height"], 3)
    blink = np.zeros(n, bool)
    for b in rng.choice(n - 6, 3, replace=False):
        blink[b:b + 6] = True
    for part in ("eye", "pupil", "cr"):
        out[f"{part}_area_raw"] = out[f"{part}_area"].copy()
        out[f"{part}_area"] = np.where(blink, np.nan, out[f"{part}_area"])
    out["likely_blink"] = blink
    return pd.DataFrame(out)


def _optotagging(rng: np.random.Generator, start: float) -> pd.DataFrame:
    """Optotagging pulses: 10 ms square pulses and 1 s raised cosines at two light levels."""
    kinds = [("pulse", "a single square pulse", 0.01), ("raised_cosine", "half-period of a cosine wave", 1.0)]
    rows = []
    n = int(OPTO_SECONDS // 1.5)
    for i in range(n):
        name, condition, duration = kinds[int(rng.integers(2))]
        level = float(rng.choice([0.5, 1.0]))
        t0 = round(start + 1.5 * i + float(rng.uniform(0, 0.2)), 5)
        rows.append({"start_time": t0, "stop_time": round(t0 + duration, 5), "condition": condition,
                     "level": level, "stimulus_name": name, "duration": duration})
    return pd.DataFrame(rows)


def _spike_trains(content: SessionContent, units: pd.DataFrame, session: pd.Series,
                  rng: np.random.Generator, end: float) -> None:
    """Draw each unit's spike train, spike amplitudes and mean waveform into *content*.

    Each train is a renewal process with a 2 ms dead time, thinned by the unit's responses: a
    kernel after each event (an image flash, a gabor, a flash, light), scaled by the unit's gain.
    Times fall on the 30 kHz clock; the mean rate over the session is the unit's ``firing_rate``.
    """
    rows = content.presentations
    image_names = list(IMAGE_SETS[str(session["image_set"])])
    shown = rows[rows["image_name"].isin(image_names)]
    kind = np.where(~shown["active"], 3, np.where(shown["rewarded"], 2, np.where(shown["is_change"], 1, 0)))
    gabors = rows[rows["stimulus_name"] == "gabor_20_deg_250ms"]
    flashes = rows[rows["stimulus_name"] == "flash_250ms"]
    opto = content.optotagging
    events = pd.concat([
        pd.DataFrame({"time": shown["start_time"], "kind": kind,
                      "image": [image_names.index(i) for i in shown["image_name"]]}),
        pd.DataFrame({"time": gabors["start_time"], "kind": 4, "x": gabors["position_x"],
                      "y": gabors["position_y"]}),
        pd.DataFrame({"time": flashes["start_time"], "kind": 5}),
        pd.DataFrame({"time": opto["start_time"], "kind": 6, "level": opto["level"]}),
    ], ignore_index=True).sort_values("time", kind="stable")
    ev_time_a = events["time"].to_numpy(float)
    ev_kind_a = events["kind"].to_numpy(int)
    ev_image = events["image"].fillna(0).to_numpy(int)
    gx, gy = events["x"].fillna(0).to_numpy(float), events["y"].fillna(0).to_numpy(float)
    ev_value_a = events["level"].fillna(0).to_numpy(float)
    cre = "Cre" in str(session["genotype"])

    start = float(content.stimulus_timestamps[0]) - 5.0
    duration = end - start
    acronyms = units["structure_acronym"].astype(str).to_numpy()
    visual = np.char.startswith(acronyms.astype(str), "VIS") | np.isin(acronyms, ["LGd", "LP"])
    n = len(units)
    gain_visual = np.where(visual, rng.uniform(0.5, 3.0, n), rng.uniform(0.0, 0.15, n))
    tagged = cre & (rng.random(n) < 0.08) & visual
    rf = rng.uniform(-40, 40, (n, 2))
    image_pref = rng.gamma(2.0, 0.5, (n, 8))
    rates = units["firing_rate"].to_numpy(float)
    amplitude = units["amplitude"].to_numpy(float)
    content.spike_times, content.spike_amplitudes = [], []
    for u in range(n):
        g = gain_visual[u]
        pref = image_pref[u][ev_image]
        gain = np.select([ev_kind_a == 0, ev_kind_a == 1, ev_kind_a == 2, ev_kind_a == 3, ev_kind_a == 4,
                          ev_kind_a == 5, ev_kind_a == 6],
                         [g * pref, g * pref * 2.0, g * pref * 3.5, g * pref * 0.7,
                          g * 2.5 * np.exp(-((gx - rf[u, 0]) ** 2 + (gy - rf[u, 1]) ** 2) / (2 * 15.0**2)),
                          g * 1.5, np.where(tagged[u], 25.0 * ev_value_a, 0.0)], 0.0)
        peak = 1.0 + float(gain.max(initial=0.0))
        mean_mod = 1.0 + float(gain.sum()) * 0.12 / duration  # a kernel's integral is about 0.12 s
        base = rates[u] / mean_mod
        candidate_rate = base * peak
        mean_isi = 1.0 / candidate_rate
        n_draw = int(duration * candidate_rate * 1.2) + 20
        isi = REFRACTORY_S + rng.exponential(max(mean_isi - REFRACTORY_S, 1e-4), n_draw)
        t = start + np.cumsum(isi)
        t = t[t < end]
        idx = np.searchsorted(ev_time_a, t) - 1
        lag = t - ev_time_a[np.maximum(idx, 0)] - 0.03
        kernel = np.where((idx >= 0) & (lag > 0), (lag / 0.05) * np.exp(1 - lag / 0.05), 0.0)
        mod = 1.0 + gain[np.maximum(idx, 0)] * kernel
        keep = rng.random(len(t)) < mod / peak
        t = np.round(t[keep] * SPIKE_CLOCK_HZ) / SPIKE_CLOCK_HZ
        content.spike_times.append(t)
        steps = np.round(rng.normal(0, 30, len(t)))  # in steps of 0.5 % of the unit's amplitude
        content.spike_amplitudes.append((amplitude[u] * 1e-6 * np.exp(0.005 * steps)).astype(np.float32))
    # mean waveforms: a trough then a peak, narrower for narrow-spiking units (waveform_duration)
    s = np.arange(WAVEFORM_SAMPLES) / 30.0 - 0.6  # ms from the trough (30 kHz samples)
    dur = units["waveform_duration"].to_numpy(float)[:, None]
    trough = -np.exp(-(s[None, :] / 0.12) ** 2)
    peak_wave = 0.4 * np.exp(-((s[None, :] - dur) / (0.25 + dur / 2)) ** 2)
    content.waveforms = ((trough + peak_wave) * amplitude[:, None]).astype(np.float32)
