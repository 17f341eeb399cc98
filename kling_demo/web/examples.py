"""The ready-made starts in the row at the top of the page: a first frame and the settings each fills
(assets/LICENSES.md says where each picture is from)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class Example:
    """One ready-made start: a first frame and the settings it fills (assets/LICENSES.md says where each is from)."""

    title: str
    image: str
    prompt: str
    negative: str = ""
    end_image: str | None = None
    duration: int = 5

    @property
    def extras(self) -> list[str]:
        """What it sets beyond the first frame and the prompt, in the words of the page's labels."""
        return [name for name, value in (("an end frame", self.end_image), ("a negative prompt", self.negative))
                if value]


EXAMPLES = [
    Example("Sunset lake", "sunset-lake.jpg", "The sun sinks behind the mountains as ripples cross the lake"),
    Example("Day to night (end frame)", "sunset-lake.jpg", "Dusk falls over the lake and the stars come out",
            negative="blurry", end_image="night-lake.jpg"),
    Example("Astronaut", "astronaut.jpg", "She smiles and turns toward the camera as the flag stirs behind her",
            negative="distorted face, extra fingers"),
    Example("Cat", "chelsea-cat.jpg", "The cat slowly blinks, its whiskers twitching as it looks around"),
    Example("Coffee (camera move)", "coffee.jpg", "A slow dolly-in over the cup as steam curls up from the coffee"),
    Example("Rocket launch (10 s)", "rocket.jpg", "The rocket lifts off in a burst of smoke and flame as the "
            "camera tilts up to follow it", duration=10),
]
