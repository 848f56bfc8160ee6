"""Expansions in the form the expansion prompt asks for (comma-separated visual phrases), for counting.

Hand-written, not model output: no GPU or Qwen2.5-7B weights are reachable where the bench runs. They follow
the system prompt (services/llm_service/prompts.py) and vary the subject, the length (95 to 180 words) and
the share of short phrases, which is what moves tokens per word: each comma is a token of its own. Replace
or extend them with real expansions from a pod's logs to re-measure.
"""

from __future__ import annotations

SAMPLES: dict[str, list[str]] = {
    "1to1": [
        "sitting at a small round table by the window of a cosy corner café on a rainy afternoon, both "
        "hands wrapped around a white ceramic cup of cappuccino with a leaf drawn in the foam, wearing an "
        "oversized cream cable-knit sweater with the sleeves pushed up, a soft relaxed smile aimed at the "
        "camera, raindrops running down the glass behind her, blurred warm street lights and red umbrellas "
        "outside, a stack of paperbacks and a half-eaten almond croissant on the table, warm tungsten light "
        "from a brass pendant lamp, gentle window light on one side of the face, eye-level close-up from "
        "across the table, shallow depth of field, intimate, calm and cosy mood",
        "taking a mirror selfie in a bright hallway before heading out for the evening, phone held at chest "
        "height, wearing a fitted black leather jacket over a white cotton t-shirt, high-waisted blue jeans "
        "and clean white sneakers, a small gold hoop earring catching the light, one hand in a jacket "
        "pocket, playful confident expression with a slight head tilt, a coat rack with a straw hat and a "
        "green tote bag behind, a framed botanical print on the pale wall, late golden sunlight through an "
        "open door casting long shadows on the wooden floor, natural colours, candid smartphone photo, "
        "vertical framing from the knees up, cheerful upbeat mood",
        "lying on a striped beach towel in the shade of a blue parasol, propped up on one elbow, reading a "
        "paperback novel with sunglasses pushed up into the hair, wearing a loose linen shirt over a navy "
        "swimsuit, bare feet in the warm sand, a straw bag, a water bottle and a bowl of cherries beside "
        "the towel, turquoise sea and gentle white surf in the background, a few sailboats on the horizon, "
        "bright midday sun with soft bounce light under the parasol, high-angle shot from standing height, "
        "crisp detail, relaxed lazy summer holiday mood",
    ],
    "shorts": [
        "mid-stride on a rain-slicked city crosswalk at night, turning back toward the camera with a bright "
        "laugh, long coat swinging open, wearing a camel wool trench coat over a black turtleneck, slim "
        "grey trousers and chunky black boots, a clear umbrella tilted over one shoulder with raindrops "
        "beading on it, glowing neon signs in pink, cyan and amber reflected in the wet asphalt, a yellow "
        "taxi passing in a streak of motion blur, steam rising from a street grate, crowds as soft "
        "silhouettes behind, strong backlight from a shop window creating a rim of light around the hair, "
        "low-angle vertical frame from the waist up, dynamic diagonal composition, shallow depth of field "
        "with glittering bokeh, energetic playful mood, crisp high-contrast colours, cinematic urban night "
        "atmosphere, sharp focus on the face and the umbrella handle",
        "jumping off a wooden pier into a clear mountain lake on a summer morning, caught at the top of the "
        "leap with knees tucked and arms thrown wide, wearing a red one-piece swimsuit and a sporty black "
        "watch, hair flying upward, droplets from the previous jump frozen in the air, pine forest and grey "
        "granite peaks mirrored in the still green water, a canoe tied to the end of the pier, friends "
        "cheering as blurred shapes on the dock, bright low sun from the side throwing warm highlights on "
        "skin and wood, deep blue sky with a few thin clouds, vertical frame from below the pier looking "
        "up, fast shutter freezing the motion, vivid saturated colours, joyful adventurous mood, dynamic "
        "composition with strong diagonals, detailed textures of wet planks and rippling water",
        "dancing alone in a sunlit loft apartment with wireless headphones on, spinning on one foot with "
        "eyes closed, wearing a cropped mustard cardigan, a white tank top and wide-leg denim, barefoot on "
        "polished concrete, a vinyl record player and a stack of records on a low shelf, tall potted "
        "monstera and fiddle-leaf fig plants, exposed brick wall with framed concert posters, large "
        "industrial windows with black steel frames, late afternoon sun pouring in and drawing bright "
        "rectangles on the floor, floating dust catching the light, motion blur on the swirling cardigan, "
        "vertical frame at hip height, warm golden palette with teal accents, carefree happy mood, lively "
        "energetic composition, crisp focus on the face and hands",
    ],
    "scenes": [
        "standing at the edge of a windswept sea cliff at golden hour, looking out over the ocean with one "
        "hand shading the eyes, long hair and a wool scarf lifted by the wind, wearing a dark green waxed "
        "jacket, a chunky grey knit sweater, worn brown leather boots and a canvas backpack, tall grass and "
        "purple heather bending in the gusts around the legs, a narrow dirt path winding along the clifftop "
        "to a white lighthouse on a distant headland, waves breaking into white foam against black rocks "
        "far below, seabirds wheeling in the updraft, a fishing boat small on the horizon, layered clouds "
        "lit orange, pink and violet by the low sun, long soft shadows stretching inland, wide cinematic "
        "frame with the figure on the left third, deep focus from the grass in front to the lighthouse, "
        "rich natural colour grading, a quiet sense of freedom and longing, atmospheric haze over the "
        "water, fine detail in the rocks, fabric and grass, epic yet intimate mood, the light warm on one "
        "side of the face and cool blue in the shadows",
        "browsing a crowded night market in an old town square, holding a paper cone of roasted chestnuts "
        "and laughing with a street vendor, wearing a burgundy wool coat, a cream beret and leather gloves, "
        "rows of wooden stalls with striped canvas awnings selling lanterns, spices, knitted scarves and "
        "hand-painted ceramics, strings of warm festoon lights zigzagging overhead, steam rising from a "
        "large pan of mulled wine, a carousel glowing in the background with painted horses frozen "
        "mid-turn, cobblestones glistening after a light rain, medieval half-timbered houses with lit "
        "windows framing the square, a church tower against a deep blue evening sky, couples and families "
        "as softly blurred figures, wide establishing shot at eye level, the character framed in the middle "
        "ground, warm amber and red palette balanced with cool blue shadows, cosy festive mood, cinematic "
        "depth, fine detail on fabrics, food and wood grain, gentle film grain, inviting and lively "
        "atmosphere",
        "exploring an overgrown greenhouse ruin at dawn, pushing aside a curtain of hanging ivy, eyes wide "
        "with wonder, wearing a faded olive field jacket, a linen shirt, rolled canvas trousers and muddy "
        "hiking boots, a vintage film camera on a leather strap across the chest, shattered glass panes in "
        "a rusted Victorian iron frame high overhead, giant ferns, palms and flowering orchids reclaiming "
        "the space, moss-covered stone benches and a cracked marble fountain with a thin trickle of water, "
        "shafts of pale morning light cutting through mist and floating pollen, dew on every leaf, a robin "
        "perched on a broken beam, birds silhouetted against the pale sky through the gaps in the roof, "
        "wide cinematic frame from a low angle with the character small against the towering plants, soft "
        "volumetric light, muted greens and golds with touches of magenta from the orchids, quiet magical "
        "discovery mood, detailed textures of rust, moss, glass and foliage, deep focus, serene atmosphere",
    ],
}
