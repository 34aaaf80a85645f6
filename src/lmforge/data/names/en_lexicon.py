"""Word lists behind the English name finder (written for lmforge, no downloads).

GIVEN_NAMES are common English first names. AMBIGUOUS_GIVEN are the ones that are also
everyday words, months, places or brands ("Will", "May", "Jordan", "Paris"): they count as a
name only with a listed surname after them or a title before them. SURNAMES is a list of
common family names, several of which are everyday words too ("Brown", "King"), so the list
overrides STOP_WORDS when a token follows a first name.
"""

from __future__ import annotations


def _words(block: str) -> frozenset[str]:
    return frozenset(block.split())


GIVEN_NAMES = _words(
    """
    Aaron Abigail Adam Adrian Aidan Alan Albert Alec Alex Alexander Alexandra Alexis Alfred
    Alice Alicia Alison Allison Amanda Amelia Amy Andrea Andrew Andy Angela Anita Ann Anna
    Anne Annie Anthony Antonio Arthur Ashley Audrey Barbara Barry Ben Benjamin Bernard Beth
    Betty Beverly Bob Bobby Bonnie Brad Bradley Brandon Brenda Brian Bridget Brittany Bruce
    Bryan Caleb Carl Carlos Carol Caroline Carolyn Catherine Cathy Charles Charlie Charlotte
    Cheryl Chloe Chris Christian Christina Christine Christopher Cindy Claire Clara Colin
    Connor Craig Cynthia Dan Daniel Danielle Danny Darren David Deborah Debra Dennis Derek
    Diana Diane Donald Donna Doris Dorothy Douglas Dylan Ed Eddie Edward Eileen Elaine Eleanor
    Elijah Elizabeth Ella Ellen Emily Emma Eric Erica Erin Ethan Eugene Evan Evelyn Frances
    Francis Frank Fred Frederick Gabriel Gail Gary Gavin Geoffrey George Gerald Gloria Gordon
    Gregory Greg Hannah Harold Harry Heather Helen Henry Howard Ian Isaac Isabel Isabella
    Jack Jacob Jacqueline Jake James Jamie Jane Janet Janice Jason Jean Jeff Jeffrey Jennifer
    Jenny Jeremy Jerry Jesse Jessica Jill Jim Jimmy Joan Joanna Joe Joel John Johnny Jon
    Jonathan Joseph Josh Joshua Joyce Judith Judy Julia Julie Justin Karen Kate Katherine
    Kathleen Kathryn Kathy Katie Keith Kelly Kenneth Kevin Kim Kimberly Kyle Laura Lauren
    Lawrence Leah Leonard Leslie Linda Lisa Logan Louis Louise Lucas Lucy Luke Lydia Lynn
    Madison Margaret Maria Marie Marilyn Martha Martin Mary Matthew Megan Melanie Melissa
    Michael Michelle Mike Natalie Nathan Neil Nicholas Nick Nicole Noah Norman Oliver Olivia
    Oscar Pamela Patricia Patrick Paul Paula Peter Philip Phillip Rachel Ralph Randy Raymond
    Rebecca Richard Rick Robert Roger Ronald Rosemary Roy Russell Ruth Ryan Samantha Samuel
    Sandra Sara Sarah Scott Sean Sharon Shirley Simon Sophia Sophie Stephanie Stephen Steve
    Steven Susan Teresa Terry Theresa Thomas Timothy Tina Todd Tom Tony Tracy Travis Victor
    Vincent Virginia Walter Wayne William Zachary Zoe Abdul Ahmed Ali Amir Hassan Mohammed
    Muhammad Omar Priya Raj Rahul Sanjay Ravi Anil Arjun Deepak Wei Li Ming Hui Jun Yan Hiroshi
    Kenji Yuki Akira Takeshi Carmen Diego Elena Fernando Javier Jorge Jose Juan Luis Manuel
    Miguel Pablo Pedro Rosa Sofia Ana Marco Giovanni Francesca Hans Klaus Stefan Ingrid Olga
    Ivan Dmitri Sergei Natasha Anya Elton Hillary Barack Kamala Donald Ludwig Wolfgang Lionel
    Cristiano Serena Venus Roger Rafael Novak Andre Leonardo Quentin Steven Bryce Colton Trevor
    Shane Wesley Spencer Marcus Jared Seth Cody Devin Derrick Glenn Grant Jeffery Kirk Lance
    Lloyd Marvin Mitchell Neal Nelson Perry Randall Rodney Ross Stanley Stuart Warren Wendell
    Agnes Beatrice Bernice Cecilia Constance Edith Esther Gwen Harriet Irene Janine Joanne
    Josephine Lorraine Marjorie Maureen Miriam Monica Nancy Norma Phyllis Rita Roberta Sally
    Sheila Sylvia Tammy Tanya Valerie Vanessa Vera Wanda Yvonne Abby Bella Emmett Harvey
    Hugh Jasper Leo Levi Malcolm Max Miles Owen Rory Theo Toby Wyatt Zach Gwendolyn Mabel
    Naomi Penelope Ruby Stella Tessa Violet Willow Aurora Hazel Ivy Jade Lily Daisy Holly
    Iris Amber Crystal Dawn Joy Faith Hope Grace April May June Summer Autumn Jordan Mark
    Bill Will Rose Chase Georgia Austin Paris Victoria Florence Sydney Chelsea Dallas
    Lincoln Jackson Cameron Carter Taylor Morgan Hunter Mason Tyler Brooke Dakota Phoenix
    River Sky Angel Destiny Faye Pat Sue Art Guy Dean Drew Earl Frank Gene Jay Ray Rob Sam
    Ted Tim Walker Wendy Alexa Casper Harley Mercedes Bentley Porsche Tiffany Ginger Candy
    Chanel Tommy Ralph Dell Stanley Lowe Kay Jewel Sherry Brandy Misty Stormy Penny Robin
    Jasmine Heath Cliff Forrest Rocky Rusty Sandy Skip Bud Buck Chip Duke King Prince Major
    Sterling Royal Price Bishop Ford Clay Lane Reed Wade Miller Gray Hayden Christian Virgil
    """
)

# Also everyday words, dates, places or brands: a name only with a surname or a title.
AMBIGUOUS_GIVEN = _words(
    """
    Hope Grace Faith Joy Dawn April May June Summer Autumn Jordan Mark Bill Will Rose Chase
    Georgia Austin Paris Victoria Florence Sydney Chelsea Dallas Lincoln Jackson Carter Taylor
    Morgan Hunter Mason Tyler Brooke Dakota Phoenix River Sky Angel Destiny Pat Sue Art Guy
    Dean Drew Earl Frank Gene Jay Ray Rob Sam Ted Walker Wendy Alexa Casper Harley Mercedes
    Bentley Porsche Tiffany Ginger Candy Chanel Tommy Dell Stanley Lowe Kay Jewel Sherry Brandy
    Misty Stormy Penny Robin Jasmine Heath Cliff Forrest Rocky Rusty Sandy Skip Bud Buck Chip
    Duke King Prince Major Sterling Royal Price Bishop Ford Clay Lane Reed Wade Miller Gray
    Christian Virgil Ruby Violet Willow Aurora Hazel Ivy Jade Lily Daisy Holly Iris Amber
    Crystal Max Miles Leo Venus Serena Grant Glenn Lance Nelson Perry Ross Warren Stuart
    Virginia Carol Jean Kelly Kim Li Ming Hui Jun Yan Wei Ali Art Ann Don Andy Nick Jack
    Lynn Lloyd Marvin Norman Chris Joe Kirk Neil Roger Louis
    """
)

SURNAMES = _words(
    """
    Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
    Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris
    Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill
    Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips
    Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers
    Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward
    Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez
    Castillo Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan
    Bell Coleman Butler Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson
    Alexander Hamilton Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera
    Gibson Ellis Tran Medina Aguilar Stevens Murray Ford Castro Marshall Owens Harrison Fernandez
    McDonald Woods Washington Kennedy Wells Vargas Henry Chen Freeman Webb Tucker Guzman Burns
    Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon Munoz Hunt
    Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer
    Rice Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan Gardner Payne Grant
    Dunn Kelley Spencer Hawkins Arnold Pierce Vazquez Hansen Peters Santos Hart Bradley Knight
    Elliott Cunningham Duncan Armstrong Hudson Carroll Lane Riley Andrews Alvarado Ray Delgado
    Berry Perkins Hoffman Johnston Matthews Pena Richards Contreras Willis Carpenter Lawrence
    Sandoval Wang Li Zhang Liu Yang Huang Zhao Wu Zhou Xu Sun Ma Zhu Hu Guo Lin He Gao Luo
    Wong Chan Cheung Lam Ng Ho Leung Tan Lim Goh Singh Kumar Sharma Gupta Khan Shah Ahmed Ali
    Tanaka Suzuki Sato Watanabe Yamamoto Nakamura Kobayashi Park Choi Jung Kang Cho Yoon
    Mueller Schneider Fischer Weber Becker Schulz Koch Rossi Russo Ferrari Esposito Bianchi
    Romano Colombo Dubois Durand Moreau Laurent Leroy Petrov Ivanov Smirnov Kowalski Nowak
    Novak Jensen Nielsen Larsen Andersen Johansson Karlsson Nilsson Eriksson Hansson Olsen
    O'Brien O'Connor O'Neill O'Sullivan Kelly Walsh Byrne Doyle McCarthy Gallagher Quinn
    Wilkinson Hughes Davies Price Lloyd Morgan Jenkins Owen Hopkins Thomas Roberts Griffiths
    Wong Kennedy Lincoln Obama Clinton Bush Trump Biden Reagan Nixon Carter Roosevelt Jefferson
    Adams Madison Monroe Churchill Thatcher Blair Cameron Johnson Sinclair Fleming Austen
    Dickens Shakespeare Darwin Newton Einstein Curie Edison Tesla Gates Jobs Musk Bezos Buffett
    Beethoven Mozart Bach Picasso Gogh Hilton Kors Lauren Klein Swift Holmes Watson Baldwin
    Barker Bishop Blake Bowen Burke Burton Chapman Dean Drake Fletcher Fuller Gilbert Hardy
    Harper Hayward Hobbs Hodges Holland Hopper Jacobs Keller Lambert Lowe Lucas Lynch Mann
    Marsh May Mercer Moss Newman Norris Page Parsons Pearson Potter Reid Rhodes Saunders
    Sharp Shepherd Sherman Steele Stanley Sutton Thornton Townsend Vaughn Wade Walters Warner
    Watts Wheeler Whitaker Wolfe Wyatt Yates Hill Holt Horton Howell Hubbard Ingram Jennings
    Kramer Lamb Little Lyons Maxwell McKenzie Morton Nash Neal Nolan Oliver Osborne Patton
    Poole Pratt Quinn Ramsey Randall Reese Roth Savage Schwartz Stokes Strickland Summers
    Todd Tyler Valdez Vance Wall Webster Whitney Wiley Wise Wolf Woodward Zimmerman
    """
)

TITLES = _words(
    """
    Mr Mrs Ms Miss Mx Dr Prof Professor Sir Dame Madam Madame Mme Mlle Lord Lady Rev
    Reverend Fr Father Sister Brother Capt Captain Col Colonel Gen General Lt Sgt Sergeant
    Judge Justice Senator Sen Rep Gov Governor President Mayor Officer Detective Coach Uncle
    Aunt Auntie Grandma Grandpa
    """
)
# Titles that read as ordinary words too: a title only when a dot follows or the next token
# is itself a known first name or surname ("General Motors" stays).
WEAK_TITLES = _words(
    """
    Father Sister Brother Captain Colonel General Judge Justice Senator President Mayor Officer
    Detective Coach Uncle Aunt Auntie Grandma Grandpa Lord Lady Governor Reverend Sergeant
    Miss Professor
    """
)

PARTICLES = _words("van von der den de da del della di du la le bin ibn al")

# Capitalised words that end a name: a token after a name that turns it into a place,
# organisation or event ("Washington Street", "John Lewis Partnership", "Grace Hospital").
ORG_SUFFIXES = _words(
    """
    Street St Avenue Ave Road Rd Boulevard Blvd Lane Drive Way Square Place Park Bridge Tunnel
    Hall Hospital Clinic University College School Academy Institute Center Centre Museum
    Library Stadium Arena Airport Station Port Bay Beach Island Islands Lake River Mountain
    Mountains Valley County City Town Village Inc Ltd LLC Corp Corporation Company Co Group
    Foundation Trust Fund Bank Hotel Church Cathedral Chapel Award Awards Prize Cup Trophy
    Day Festival Show Studio Studios Records Press Books Foods Motors Airlines Partnership
    Memorial Building Tower Towers Plaza Mall Store Stores Shop Market Restaurant Cafe Bar
    Brand Collection Series Edition Model Pro Max Plus Mini Air Ultra Lite
    """
)

# Lower-cased words that are never a surname after a first name (unless listed in SURNAMES):
# function words, days, months, and words that start title-case headings and product names.
STOP_WORDS = _words(
    """
    a an the and or but nor so yet for of in on at to from by with about as into onto over
    under after before since until while if then than that this these those there here
    i me my we our you your he him his she her it its they them their who whom whose which
    what when where why how all any both each every few many more most other some such no
    not only own same too very can will just should now is are was were be been being have
    has had do does did would could may might must shall also again once please thanks
    thank dear hi hello hey yes ok okay monday tuesday wednesday thursday friday saturday
    sunday january february march april may june july august september october november
    december spring summer autumn fall winter today tomorrow yesterday christmas easter new
    old good great best big small first last next free open official review reviews guide
    news update report phone watch pad book tablet laptop case cover charger cable card
    shoes shoe bag bags shirt jacket box kit set pack edition series version app apps game
    games team club fan fans love happy birthday congratulations welcome home call email
    street road city county state north south east west central national international
    american british english french german chinese japanese korean indian european african
    asian canadian australian mexican spanish italian russian company inc ltd corp university
    college school hospital church bank hotel airport station museum park lake river
    """
)
