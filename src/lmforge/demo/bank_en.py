"""English phrase bank: six product areas plus the evaluative glue shared by all of them."""

from __future__ import annotations

from lmforge.demo.lexicon import Domain, domain, split

DOMAINS: tuple[Domain, ...] = (
    domain(
        "electronics",
        "Electronics",
        "wireless earbuds|phone charger|laptop|smartwatch|bluetooth speaker|mechanical keyboard"
        "|4K monitor|tablet|power bank|noise-cancelling headphones",
        "I bought the {product} last month.|Got the {product} a couple of weeks ago."
        "|Picked up the {product} during a sale.|I've been using the {product} for about a month."
        "|Upgraded to the {product} from an older model.",
        (
            (
                "the battery life",
                "is",
                "excellent|outstanding|solid|impressive",
                "poor|short|disappointing|awful",
            ),
            ("the sound", "is", "crisp|rich|clear|balanced", "muddy|tinny|thin|distorted"),
            ("the screen", "is", "bright|sharp|vivid|gorgeous", "dim|grainy|washed out|blurry"),
            ("the build quality", "is", "sturdy|premium|solid", "flimsy|cheap|plasticky"),
            ("the connection", "is", "stable|reliable|steady", "spotty|unreliable|flaky"),
            ("the setup", "was", "painless|quick|straightforward", "confusing|frustrating|painful"),
            ("the buttons", "are", "responsive|tactile|satisfying", "mushy|stiff|unresponsive"),
        ),
        "it easily lasts two full days on one charge|pairing took about five seconds"
        "|it charges from empty to full in under an hour"
        "|I dropped it twice and it still works like day one"
        "|calls come through loud and clear even on a busy street"
        "|the case snaps shut with a reassuring click|it wakes up instantly every time",
        "the battery drains within a few hours|it stopped charging after a week"
        "|it disconnects every ten minutes|the left earbud died after a month"
        "|it gets hot enough to burn your hand|the screen cracked the first time it slipped"
        "|I have to restart it every morning|the charging port wobbled loose within days",
        "I mostly use it on my commute|it comes with a USB-C cable|I got the black version"
        "|I use it alongside my old laptop|it replaced a five-year-old model"
        "|I mainly use it for video calls",
    ),
    domain(
        "food",
        "Food delivery",
        "pad thai|burger combo|bubble tea|pepperoni pizza|sushi platter|ramen bowl"
        "|chicken wings|poke bowl|breakfast burrito|dumpling set",
        "Ordered the {product} for dinner.|Got the {product} delivered to the office."
        "|We ordered the {product} on a rainy evening."
        "|Tried the {product} from a new place nearby.",
        (
            ("the delivery", "was", "fast|quick|prompt|speedy", "slow|late|sluggish"),
            ("the portions", "are", "generous|huge|filling", "tiny|stingy|skimpy"),
            ("the noodles", "were", "springy|fresh|tasty", "soggy|bland|overcooked"),
            ("the packaging", "was", "neat|secure|tidy", "leaky|messy|flimsy"),
            ("the food", "was", "hot|fresh|flavorful|delicious", "cold|greasy|bland|stale"),
            ("the courier", "was", "polite|friendly|careful", "rude|careless|impatient"),
            ("the sauce", "was", "rich|tangy|balanced", "watery|salty|sickly"),
        ),
        "it arrived twenty minutes earlier than the app said"
        "|the fries were still crispy when they got to my door"
        "|there was enough left over for lunch the next day|they remembered the no-onion note"
        "|the tea came sealed with the pearls still soft|the courier called ahead to find the gate",
        "it took over two hours to arrive|half the soup had leaked into the bag"
        "|they forgot the drinks entirely|the rice was hard in the middle"
        "|I found a hair in the salad|the order showed delivered but never came"
        "|the pizza showed up folded in half|the ice had melted into the noodles",
        "I ordered it for a team lunch|it was a Friday night order|I paid with the app wallet"
        "|we ordered for four people|I picked the medium spice level",
    ),
    domain(
        "hotel",
        "Hotels",
        "city center hotel|beach resort|airport hotel|boutique inn|business hotel|hostel"
        "|ski lodge|serviced apartment|riverside guesthouse",
        "We stayed at the {product} for three nights.|I booked the {product} for a work trip."
        "|Spent a weekend at the {product}.|We picked the {product} for our anniversary.",
        (
            ("the room", "was", "spacious|spotless|cozy|quiet", "cramped|dirty|stuffy|noisy"),
            ("the bed", "was", "comfortable|plush|supportive", "lumpy|hard|saggy"),
            (
                "the front desk staff",
                "were",
                "helpful|welcoming|attentive",
                "rude|dismissive|unhelpful",
            ),
            ("the breakfast", "was", "varied|fresh|delicious", "sad|stale|limited"),
            ("the location", "is", "convenient|central|ideal", "remote|sketchy|inconvenient"),
            ("the shower", "was", "powerful|hot|spotless", "lukewarm|weak|moldy"),
            ("the Wi-Fi", "was", "fast|reliable|stable", "slow|patchy|useless"),
        ),
        "check-in took two minutes|they upgraded us to a sea-view room"
        "|we could walk to the old town in five minutes"
        "|housekeeping left fresh towels every day|they stored our bags after checkout for free"
        "|the blackout curtains actually block out the light",
        "the air conditioning rattled all night|there were hair strands on the pillow"
        "|we waited forty minutes to check in|the walls are so thin we heard every word next door"
        "|they charged a deposit that still hasn't been returned"
        "|there was construction drilling from seven in the morning|the room smelled of smoke",
        "we stayed in October|it was a business trip|we booked through an online agency"
        "|the hotel is next to a shopping mall|we had a twin room on the fourth floor",
    ),
    domain(
        "apparel",
        "Apparel",
        "rain jacket|running shoes|denim jeans|wool sweater|summer dress|hiking boots|hoodie"
        "|linen shirt|winter coat|yoga leggings",
        "I ordered the {product} in my usual size.|Bought the {product} for the new season."
        "|Got the {product} as a birthday present.|Bought the {product} for work.",
        (
            ("the fabric", "is", "soft|breathable|thick|smooth", "scratchy|thin|itchy|cheap"),
            ("the fit", "is", "flattering|comfortable|tailored", "boxy|tight|awkward|baggy"),
            ("the stitching", "is", "neat|tight|even", "sloppy|loose|crooked"),
            ("the color", "is", "vibrant|rich|accurate", "faded|dull|muddy"),
            ("the soles", "are", "grippy|cushioned|springy", "slippery|stiff|hard"),
            ("the zipper", "is", "smooth|sturdy", "stiff|flimsy|fiddly"),
        ),
        "it still looks new after ten washes|I walked fifteen kilometers in them with no blisters"
        "|it kept me dry through a full day of rain|I've had three compliments already"
        "|the color didn't run in the wash|it packs down small enough for a backpack",
        "it shrank two sizes after one wash|a seam split the first time I wore it"
        "|the dye came off on my white sofa|the sole started peeling after two weeks"
        "|it pills after a single wear|the zipper broke on day three"
        "|it smells of chemicals even after washing",
        "I ordered a size medium|I bought the navy one|it's for my daily commute"
        "|I wear it mainly on weekends|I usually wear a size up in this brand",
    ),
    domain(
        "support",
        "Customer support",
        "support hotline|live chat support|after-sales service|refund request|broadband helpdesk"
        "|membership support|warranty claim|delivery complaint",
        "I contacted the {product} about a billing question.|I had to use the {product} last week."
        "|Reached out to the {product} about a missing parcel.|I went through the {product} twice.",
        (
            (
                "the agent",
                "was",
                "patient|knowledgeable|friendly|professional",
                "rude|clueless|impatient|dismissive",
            ),
            ("the response time", "was", "quick|fast|impressive", "slow|painful|ridiculous"),
            ("the solution", "was", "effective|clear|sensible", "useless|vague|confusing"),
            ("the follow-up", "was", "thorough|prompt|proactive", "late|sloppy|careless"),
            ("the wait", "was", "short|bearable", "endless|unbearable|long"),
        ),
        "the refund landed in my account the same day"
        "|they called back within ten minutes as promised|the replacement arrived two days later"
        "|they fixed the issue on the first call|they waived the shipping fee without me asking",
        "I was transferred five times|I explained the problem to three different people"
        "|they closed the ticket without solving anything"
        "|I was on hold for an hour and then got cut off"
        "|they promised a callback that never came|the chatbot kept sending me the same link",
        "I contacted them on a Monday morning|I used the chat in the app"
        "|it was about a double charge|it was about a missing parcel",
    ),
    domain(
        "appliances",
        "Home appliances",
        "air fryer|robot vacuum|electric kettle|rice cooker|washing machine|standing fan"
        "|dishwasher|blender|space heater|coffee machine",
        "We bought the {product} for our new flat.|Ordered the {product} to replace the old one."
        "|I've had the {product} for about six weeks.|Got the {product} during a holiday sale.",
        (
            ("the noise level", "is", "low|pleasant|gentle", "loud|annoying|deafening"),
            ("the suction", "is", "strong|powerful|impressive", "weak|feeble|pathetic"),
            ("the heating", "is", "even|fast|consistent", "uneven|slow|patchy"),
            ("the controls", "are", "intuitive|simple|responsive", "confusing|clunky|laggy"),
            ("the cleanup", "is", "easy|quick|effortless", "messy|tedious|painful"),
            ("the app", "is", "handy|polished|reliable", "buggy|useless|clunky"),
        ),
        "it boils a full kettle in under three minutes|the fries come out crispy without any oil"
        "|it mapped the whole apartment on the first run"
        "|the basket goes straight into the dishwasher"
        "|it cut my drying time in half|the rice comes out perfect every single time",
        "it tripped the breaker twice|the inner pot started flaking after a month"
        "|it gets stuck under the sofa every single day|water leaked all over the kitchen floor"
        "|the motor smells like burning plastic|it shut itself off halfway through the cycle",
        "we have a small two-bedroom flat|I use it about three times a week"
        "|it replaced our old model|we put it in the kitchen corner|it came with a spare filter",
    ),
)

# Evaluations that are not tied to one product area; polarity is in the words themselves.
GENERIC_POS = split(
    "I love it|highly recommend it|worth every penny|it exceeded my expectations"
    "|best purchase I've made this year|couldn't be happier|absolutely no regrets"
    "|no complaints whatsoever|can't complain|not bad at all|I'm genuinely impressed"
)
GENERIC_NEG = split(
    "total waste of money|I regret buying it|never again|save your money"
    "|what a disappointment|I wouldn't recommend it to anyone|not good at all"
    "|can't recommend it|I expected a lot more|it's not worth the price"
)
GENERIC_NEUTRAL = split(
    "it's okay|it does what it says|nothing special|about what I expected"
    "|it's fine for the price|average overall|it works, I guess|mixed feelings so far"
    "|hard to say yet|it is what it is|neither great nor terrible"
)
# Subjects of an overall judgement: "overall it is good", "the {product} was poor".
OVERALL_SUBJECTS = split("the {product}|the whole experience|the quality|the value for money")
OVERALL_POS = split("great|excellent|good|solid|nice|impressive|lovely")
OVERALL_NEG = split("bad|awful|poor|disappointing|terrible|mediocre|lousy")

INTENSIFIERS = split("really|very|extremely|incredibly|super|seriously|remarkably|genuinely")
HEDGES_POS = split("fairly|reasonably|mostly|more or less")
HEDGES_NEG = split("a bit|slightly|a little|somewhat")

CLOSERS_POS = split(
    "Would buy again.|Already recommended it to friends.|Will definitely be back."
    "|Five stars from me.|Happy customer here."
)
CLOSERS_NEG = split(
    "Returning it.|I've asked for a refund.|Won't be using them again.|Lesson learned."
    "|One star is generous."
)
CLOSERS_NEUTRAL = split(
    "We'll see how it holds up.|Might update this later.|Your mileage may vary."
    "|Make of that what you will.|That's all for now."
)

# Contrast connectors: the clause after them decides the overall tone.
CONTRAST_ANY = ("{a}, but {b}", "{a}; however, {b}", "Although {a}, {b}", "{a}. That said, {b}")
CONTRAST_TO_POS = ("{a}, but luckily {b}", "{a}. Fortunately, {b}")
CONTRAST_TO_NEG = ("{a}, but unfortunately {b}", "{a}. Sadly, {b}")
