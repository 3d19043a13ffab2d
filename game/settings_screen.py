"""The settings screen: the entries of ``game/settings_entries.py`` over the map, changed with the
arrow keys and written, when the screen closes, to the same config files the command line reads.

On the first run (a first-run entry's key is in no file yet) it opens by itself as a welcome,
with those choices off until the player turns them on; closing it records the answers so it is
not asked again. It also holds "New game", which asks before starting over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pygame

from game import text
from game.config_files import ConfigFileError, read_config, write_config
from game.palette import ACCENT, BORDER, DIALOGUE_BG, INK, INK_DIM, INK_FAINT, OK_GREEN, REFUSAL
from game.settings_entries import ENTRIES, SETTINGS_FILES, stepped, value_text

#: The key that opens and closes the screen (shown in the side panel).
SETTINGS_KEY = pygame.K_F2
SETTINGS_KEY_NAME = "F2"
NEW_GAME = "New game"
WELCOME = ("Welcome to Hearth. Before you start: Hearth can find other players to share villagers' "
           "voices with. Nothing is shared with the wider internet until you turn it on here; "
           "you can change this any time with F2.")

#: (file name, key) pairs a save changed, handed to ``on_saved`` callbacks.
Changed = list[tuple[str, str]]


@dataclass
class SettingsScreen:
    #: Each file's contents as last read or written (keys the screen does not show included).
    files: dict[str, dict[str, Any]]
    values: dict[str, Any]
    is_open: bool = False
    first_run: bool = False
    selected: int = 0
    confirming_new_game: bool = False
    message: str | None = None
    message_is_error: bool = False
    on_saved: list[Callable[[Changed], None]] = field(default_factory=list)
    #: Files that exist but cannot be read: shown as defaults, never rewritten.
    unreadable: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls) -> SettingsScreen:
        files: dict[str, dict[str, Any]] = {}
        unreadable = {}
        for name in SETTINGS_FILES:
            try:
                files[name] = read_config(name)
            except ConfigFileError as e:
                files[name] = {}
                unreadable[name] = str(e)
        values = {e.key: files[e.file].get(e.key, e.default) for e in ENTRIES}
        screen = cls(files=files, values=values, unreadable=unreadable)
        if unreadable:
            screen._say("; ".join(unreadable.values())
                        + " (fix the file by hand; the game does not rewrite it)", True)
        return screen

    # -- state ------------------------------------------------------------------------------

    @property
    def rows(self) -> list[str]:
        return [e.label for e in ENTRIES] + [NEW_GAME]

    def needs_first_run(self) -> bool:
        return any(e.first_run and e.key not in self.files[e.file] and e.file not in self.unreadable
                   for e in ENTRIES)

    def open(self, first_run: bool = False) -> None:
        self.is_open, self.first_run = True, first_run
        self.selected, self.confirming_new_game = 0, False
        if not self.message_is_error:
            self.message = None

    def changed(self) -> Changed:
        """The entries whose value differs from the file (or, on the first run, that are asked
        then and not yet in it)."""
        out = []
        for e in ENTRIES:
            stored = self.files[e.file]
            if self.values[e.key] != stored.get(e.key, e.default) or (
                    self.first_run and e.first_run and e.key not in stored):
                out.append((e.file, e.key))
        return out

    def save(self) -> bool:
        """Write every changed file, each checked first by its own loader; returns whether all
        were written. A file that fails its check, or could not be read, is left as it was, its
        entries go back to what the file holds, and the screen says why."""
        changed = self.changed()
        by_file: dict[str, dict[str, Any]] = {}
        for name, key in changed:
            by_file.setdefault(name, dict(self.files[name]))[key] = self.values[key]
        written, problems = [], []
        for name, contents in by_file.items():
            spec = SETTINGS_FILES[name]
            try:
                if name in self.unreadable:
                    raise ConfigFileError(self.unreadable[name])
                spec.check(contents)
                write_config(name, contents)
            except spec.errors + (ConfigFileError, OSError) as e:
                problems.append(f"{name} not saved: {e}")
                self._revert(name)
                continue
            self.files[name] = contents
            written.append(name)
        done = [(name, key) for name, key in changed if name in written]
        if problems:
            self._say("; ".join(problems), True)
        elif done:
            self._say(f"Settings saved ({', '.join(sorted(written))}); F2 changes them", False)
        if done:
            for callback in self.on_saved:
                callback(done)
        return not problems

    def _revert(self, name: str) -> None:
        for e in ENTRIES:
            if e.file == name:
                self.values[e.key] = self.files[name].get(e.key, e.default)

    def _say(self, message: str, error: bool) -> None:
        self.message, self.message_is_error = message, error

    # -- keys -------------------------------------------------------------------------------

    def handle_key(self, key: int) -> str | None:
        """Returns "new_game" when the player has confirmed starting over, "closed" when the screen
        closed (its changes saved, or the reason they could not be in ``message``), else None."""
        if self.confirming_new_game:
            self.confirming_new_game = False
            if key == pygame.K_y:
                self.is_open = False
                return "new_game"
            return None
        if key in (pygame.K_ESCAPE, SETTINGS_KEY):
            self.save()  # closes either way: a file that cannot be written never traps the player
            self.is_open, self.first_run = False, False
            return "closed"
        rows = len(self.rows)
        if key in (pygame.K_UP, pygame.K_w):
            self.selected = (self.selected - 1) % rows
        elif key in (pygame.K_DOWN, pygame.K_s, pygame.K_TAB):
            self.selected = (self.selected + 1) % rows
        elif self.selected == len(ENTRIES):
            if key in (pygame.K_RETURN, pygame.K_KP_ENTER, pygame.K_SPACE):
                self.confirming_new_game = True
        elif key in (pygame.K_LEFT, pygame.K_a, pygame.K_RIGHT, pygame.K_d, pygame.K_RETURN,
                     pygame.K_KP_ENTER, pygame.K_SPACE):
            e = ENTRIES[self.selected]
            direction = -1 if key in (pygame.K_LEFT, pygame.K_a) else 1
            self.values[e.key] = stepped(e, self.values[e.key], direction)
        return None

    # -- drawing ----------------------------------------------------------------------------

    def draw(self, surface: pygame.Surface, area: pygame.Rect) -> None:
        rect = area.inflate(-80, -80)
        shade = pygame.Surface(rect.size, pygame.SRCALPHA)
        shade.fill(DIALOGUE_BG)
        surface.blit(shade, rect.topleft)
        pygame.draw.rect(surface, BORDER, rect, 2, border_radius=8)
        inner = rect.inflate(-40, -32)
        y = inner.top
        text.draw(surface, "Welcome" if self.first_run else "Settings", (inner.left, y), 32, ACCENT)
        y += 40
        if self.first_run:
            y = text.draw_wrapped(surface, WELCOME, pygame.Rect(inner.left, y, inner.width, 80), 20,
                                  INK) + 10
        selected_help = ""
        for i, label in enumerate(self.rows):
            chosen = i == self.selected
            if chosen:
                pygame.draw.rect(surface, BORDER, (inner.left - 8, y - 3, inner.width + 16, 28),
                                 border_radius=4)
            colour = INK if chosen else INK_DIM
            text.draw(surface, ("> " if chosen else "  ") + label, (inner.left, y), 22, colour)
            if i < len(ENTRIES):
                e = ENTRIES[i]
                shown = value_text(e, self.values[e.key])
                on = e.kind != "toggle" or bool(self.values[e.key])
                w = text.font(22).size(shown)[0]
                text.draw(surface, shown, (inner.right - w, y), 22, OK_GREEN if on else INK_FAINT)
                if chosen:
                    selected_help = f"{e.help}  ({e.file}: {e.key})"
            elif chosen:
                selected_help = "Start over in a fresh village; this game is kept as a backup."
            y += 30
        y += 6
        y = text.draw_wrapped(surface, selected_help, pygame.Rect(inner.left, y, inner.width, 90),
                              18, INK_DIM, max_lines=4) + 8
        if self.confirming_new_game:
            text.draw(surface, "Start a new game? Y: yes (this one is kept)   any other key: no",
                      (inner.left, y), 20, ACCENT)
        elif self.message:
            text.draw_wrapped(surface, self.message, pygame.Rect(inner.left, y, inner.width, 60), 18,
                              REFUSAL if self.message_is_error else OK_GREEN, max_lines=3)
        keys = "Up/Down choose   Left/Right/Enter change   Esc or F2 save and close"
        if self.first_run:
            keys = "Enter turns the highlighted choice on   Esc: done, start playing"
        text.draw(surface, keys, (inner.left, inner.bottom - 20), 18, INK_FAINT)
