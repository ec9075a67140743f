/*
 * cevm -- the group checkpoint's consistent cut on a cevm network switch
 * (DESIGN.md "A network of VMs: the group checkpoint"; Docs/group-checkpoint.md).
 *
 * Processes:
 *   VM(i)    one member. Its old instance (Old_VM) runs first: it sends
 *            frames to the other members and reads frames from its port, in
 *            any order. Its cut is its switch-over: Old_VM stops, and the
 *            member's recorded state is what Old_VM sent and read so far.
 *            The member is paused until the switch has promoted its new
 *            port; then its new instance (New_VM) runs on from that state.
 *   Switch   the cevm switch and the group's coordinator: reads frames from
 *            Old_VM ports and writes every frame to its receiver, coloured
 *            by the port it came from; promotes a member's new port when
 *            told of its cut; commits the group when every member has cut,
 *            and checks the restore of the committed record.
 *
 * Sockets (bounded FIFO channels of { peer, seq }):
 *   upOld[i]              member i's Old_VM -> the switch. The switch reads
 *                         it whenever it likes: a frame may be read after
 *                         its sender (and its receiver) cut.
 *   toOld[i] / toNew[i]   the switch -> member i's Old_VM / New_VM
 *   held[i]               frames the switch holds for member i (rule 1)
 *   ctl, resume[i]        "member i has cut" (the promote) and its answer
 * New_VM's frames are switched as they are sent: a delay in the switch's
 * read of New_VM's port is the same as a later send.
 *
 * Frames: member s sends NF frames to every other member d, numbered
 * 0 .. NF-1 per pair (s, d): a frame is its pair and its number.
 *
 * Colour: a frame from upOld[s] is pre-cut (Old_VM sent it before s cut,
 * however late the switch reads it); a frame from New_VM is post-cut.
 *   Rule 1 (hold): a post-cut frame to a receiver whose cut the switch does
 *     not know yet is held, and written to the receiver's New_VM at its
 *     promote, after the frames Old_VM never read.
 *   Rule 2 (channel state): a pre-cut frame written to a receiver after its
 *     cut is known -- live to New_VM, or an unread frame moved from Old_VM's
 *     socket at the promote -- is delivered and also recorded with the group.
 *   Promote(i): the switch reads what is left in upOld[i] (Old_VM is stopped:
 *     nothing more comes), moves the frames Old_VM never read from toOld[i]
 *     to toNew[i], then knows i's cut and releases i's held frames.
 *   Commit: when every member has cut; the record is the members' recorded
 *     states and the channel state. Restore: members restart from their
 *     recorded states, paused; each recorded frame is written once to its
 *     receiver; then the members run.
 *
 * Properties (DESIGN.md, "A network of VMs"):
 *   (1) consistency   at commit, per pair: frames the receiver's record read
 *                     <= frames the sender's record sent
 *   (2) channel state at commit, per pair: the channel state is exactly the
 *                     frames the sender's record sent and the receiver's
 *                     record did not read, each recorded once; nothing is
 *                     recorded after commit; the restore gives each receiver
 *                     exactly those frames, in order, once, before the
 *                     restored members run on: each member then reads
 *                     every frame of every pair once, in order
 *   (3) live run      every read is the next frame of its pair (per-sender
 *                     FIFO, no duplicate, nothing skipped); at the end every
 *                     frame sent was read and every queue is empty; no
 *                     invalid end state (nothing stuck)
 *   (4) no waiting    ltl cut_live: a paused member is always resumed, even
 *                     while another member never cuts (-DSTALL: the last
 *                     member's switch-over never comes); without STALL also
 *                     <> finished (the run and the group commit complete)
 *
 * Configurations: -DNVM=2 (default) or 3 members, -DNF frames per ordered
 * pair (default 2).
 *
 * Bug switches (each must make spin report an error):
 *   -DBUG_RELEASE_POSTCUT  a post-cut frame is written to a receiver whose
 *                          cut is not known (no hold)
 *   -DBUG_FORGET_CHANNEL   a pre-cut frame delivered live to a receiver
 *                          after its cut is not recorded
 *   -DBUG_RESTORE_TWICE    the restore writes each recorded frame twice
 *   -DBUG_RESTORE_LATE     the restored members run on before the recorded
 *                          frames are written to them
 *   -DBUG_DROP_UNREAD      at the promote, the frames Old_VM never read are
 *                          dropped instead of moved to New_VM
 *   -DBUG_LATE_OLD_OUT     the promote does not read what is left in
 *                          Old_VM's outgoing socket; the switch reads it later
 *   -DBUG_HELD_FIRST       at the promote, the held frames are written to
 *                          New_VM before the frames Old_VM never read
 *   -DBUG_CUT_BARRIER      stop-the-world: no member is resumed until every
 *                          member has cut (fails (4) with -DSTALL)
 *   -DSANITY_REACH         asserts false at the end of a run in which a frame
 *                          was held, one was recorded live and one was moved
 *                          from Old_VM's socket: the passes are not vacuous
 */

#ifndef NVM
#define NVM 2           /* members */
#endif
#ifndef NF
#define NF 2            /* frames per ordered pair (sender, receiver), at most 8 */
#endif
#define NIO (NF * (NVM - 1))    /* frames a member sends, and receives */

#define P(s, d) ((s) * NVM + (d))       /* index of the pair s -> d */

#define OLD 0           /* Old_VM runs */
#define PAUSED 1        /* Old_VM stopped (switch-over), New_VM not resumed */
#define NEW 2           /* New_VM runs */

#ifdef STALL
#define MAY_CUT(i) ((i) != NVM - 1)     /* the last member never cuts */
#else
#define MAY_CUT(i) true
#endif

chan upOld[NVM] = [NIO] of { byte, byte };      /* { receiver, seq } */
chan toOld[NVM] = [NIO] of { byte, byte };      /* { sender, seq } */
chan toNew[NVM] = [NIO] of { byte, byte };
chan held[NVM] = [NIO] of { byte, byte };
chan ctl = [NVM] of { byte };
chan resume[NVM] = [1] of { bit };
chan rin[NVM] = [2 * NIO] of { byte, byte };    /* restored members' ports */

/* the live run */
byte phase[NVM];                /* OLD, PAUSED, NEW */
byte sent[NVM * NVM];           /* frames s sent to d (either instance) */
byte rd[NVM * NVM];             /* frames from s that d's running instance read */
byte nsent[NVM], nread[NVM];
byte nfinished = 0;

/* the switch and the coordinator */
bool known[NVM];                /* the switch knows i's cut (promote done) */
byte ncut = 0;
bool committed = false;

/* the group record */
byte recSent[NVM * NVM];        /* sender's recorded state: frames it had sent */
byte recRd[NVM * NVM];          /* receiver's recorded state: frames it had read */
byte chanMask[NVM * NVM];       /* channel state: bit q = frame q of the pair */

/* scratch, used only inside atomic steps: not part of the state */
hidden byte hi, hs, hd, hq, hk;
hidden byte rrd[NVM * NVM];     /* the restore: frames each restored member read */

bool finished = false;
#ifdef SANITY_REACH
bool sawHeld = false, sawLive = false, sawMoved = false;
#define SAW(x) x = true
#else
#define SAW(x) skip
#endif

inline recordChannel(s, d, q) {
  printf("EV CHAN record frame %d->%d #%d as channel state\n", s, d, q);
  assert(!committed);                           /* (2) nothing after commit */
  assert((chanMask[P(s, d)] & (1 << q)) == 0);  /* (2) recorded once */
  chanMask[P(s, d)] = chanMask[P(s, d)] | (1 << q)
}

/* a frame read from Old_VM's port: pre-cut */
inline preCut(s, d, q) {
  if
  :: known[d] ->                                /* rule 2: live and recorded */
     printf("EV SW pre-cut frame %d->%d #%d to %d's new instance\n", s, d, q, d);
     toNew[d]!s, q;
     SAW(sawLive);
#ifndef BUG_FORGET_CHANNEL
     recordChannel(s, d, q)
#else
     printf("EV BUG frame %d->%d #%d not recorded\n", s, d, q)
#endif
  :: else ->
     printf("EV SW pre-cut frame %d->%d #%d to %d's old instance\n", s, d, q, d);
     toOld[d]!s, q
  fi
}

/* a frame from New_VM's port: post-cut */
inline postCut(s, d, q) {
  if
  :: known[d] ->
     printf("EV SW post-cut frame %d->%d #%d to %d's new instance\n", s, d, q, d);
     toNew[d]!s, q
  :: else ->
#ifdef BUG_RELEASE_POSTCUT
     printf("EV BUG post-cut frame %d->%d #%d to %d's old instance\n", s, d, q, d);
     toOld[d]!s, q
#else
     printf("EV SW hold post-cut frame %d->%d #%d (%d has not cut)\n", s, d, q, d);
     held[d]!s, q;                              /* rule 1 */
     SAW(sawHeld)
#endif
  fi
}

/* the restored members run on: each sends, from its recorded state on,
 * the rest of its frames to every peer */
inline restoredSend() {
  hk = 0;
  do
  :: hk < NVM * NVM ->
     hq = recSent[hk];
     do
     :: hk / NVM != hk % NVM && hq < NF ->
        printf("EV RESTORE %d sends frame %d->%d #%d\n", hk / NVM, hk / NVM, hk % NVM, hq);
        rin[hk % NVM]!(hk / NVM), hq;
        hq++
     :: else -> break
     od;
     hk++
  :: else -> break
  od
}

/* the group is committed: check (1) and (2), then its restore */
inline commit() {
  committed = true;
  printf("EV COMMIT every member has cut\n");
  hk = 0;
  do
  :: hk < NVM * NVM ->
     if
     :: hk / NVM != hk % NVM ->
        assert(recRd[hk] <= recSent[hk]);       /* (1) consistency */
        hq = 0;
        do
        :: hq < NF ->
           if                                   /* (2) in flight = channel state */
           :: recRd[hk] <= hq && hq < recSent[hk] -> assert((chanMask[hk] & (1 << hq)) != 0)
           :: else -> assert((chanMask[hk] & (1 << hq)) == 0)
           fi;
           hq++
        :: else -> break
        od
     :: else -> skip
     fi;
     hk++
  :: else -> break
  od;
  /* restore: every member restarts from its recorded state, paused */
  hk = 0;
  do
  :: hk < NVM * NVM -> rrd[hk] = recRd[hk]; hk++
  :: else -> break
  od;
#ifdef BUG_RESTORE_LATE
  restoredSend();
#endif
  /* each recorded frame is written to its receiver's port, per pair in order */
  hk = 0;
  do
  :: hk < NVM * NVM ->
     hq = 0;
     do
     :: hq < NF ->
        if
        :: (chanMask[hk] & (1 << hq)) != 0 ->
           printf("EV RESTORE deliver frame %d->%d #%d\n", hk / NVM, hk % NVM, hq);
           rin[hk % NVM]!(hk / NVM), hq;
#ifdef BUG_RESTORE_TWICE
           printf("EV BUG deliver frame %d->%d #%d again\n", hk / NVM, hk % NVM, hq);
           rin[hk % NVM]!(hk / NVM), hq;
#endif
        :: else -> skip
        fi;
        hq++
     :: else -> break
     od;
     hk++
  :: else -> break
  od;
#ifndef BUG_RESTORE_LATE
  restoredSend();                               /* then the members run */
#endif
  /* each reads its port */
  hd = 0;
  do
  :: hd < NVM ->
     do
     :: nempty(rin[hd]) ->
        rin[hd]?hs, hq;
        printf("EV RESTORE %d reads frame %d->%d #%d\n", hd, hs, hd, hq);
        assert(hq == rrd[P(hs, hd)]);           /* (2) once, in order */
        rrd[P(hs, hd)]++
     :: empty(rin[hd]) -> break
     od;
     hd++
  :: else -> break
  od;
  hk = 0;
  do
  :: hk < NVM * NVM ->
     assert(hk / NVM == hk % NVM || rrd[hk] == NF);  /* (2) nothing missing */
     hk++
  :: else -> break
  od
}

/* rule 1: the frames held for member i, in order, to its New_VM */
inline releaseHeld(i) {
  do
  :: nempty(held[i]) ->
     held[i]?hs, hq;
     printf("EV SW release held frame %d->%d #%d to %d's new instance\n", hs, i, hq, i);
     toNew[i]!hs, hq
  :: empty(held[i]) -> break
  od
}

/* the switch is told that member i has cut */
inline promote(i) {
  printf("EV PROMOTE %d: the switch learns %d's cut\n", i, i);
#ifndef BUG_LATE_OLD_OUT
  do                                            /* what Old_VM sent before it stopped */
  :: nempty(upOld[i]) -> upOld[i]?hd, hq; preCut(i, hd, hq)
  :: empty(upOld[i]) -> break
  od;
#endif
#ifdef BUG_HELD_FIRST
  releaseHeld(i);
#endif
  do                                            /* what Old_VM never read */
  :: nempty(toOld[i]) ->
     toOld[i]?hs, hq;
#ifdef BUG_DROP_UNREAD
     printf("EV BUG unread frame %d->%d #%d dropped\n", hs, i, hq)
#else
     printf("EV SW unread frame %d->%d #%d to %d's new instance\n", hs, i, hq, i);
     toNew[i]!hs, hq;
     SAW(sawMoved);
     recordChannel(hs, i, hq)                   /* rule 2 */
#endif
  :: empty(toOld[i]) -> break
  od;
  known[i] = true;
#ifndef BUG_HELD_FIRST
  releaseHeld(i);                               /* rule 1: after the unread frames */
#endif
  ncut++;
  if
  :: ncut == NVM -> commit()
  :: else -> skip
  fi;
#ifdef BUG_CUT_BARRIER
  if
  :: ncut == NVM ->
     hk = 0;
     do
     :: hk < NVM -> resume[hk]!1; hk++
     :: else -> break
     od
  :: else -> skip
  fi
#else
  resume[i]!1
#endif
}

proctype Switch() {
end_switch:
  do
  :: atomic { nempty(upOld[0]) -> upOld[0]?hd, hq; preCut(0, hd, hq) }
  :: atomic { nempty(upOld[1]) -> upOld[1]?hd, hq; preCut(1, hd, hq) }
#if NVM >= 3
  :: atomic { nempty(upOld[2]) -> upOld[2]?hd, hq; preCut(2, hd, hq) }
#endif
  :: atomic { ctl?hi -> promote(hi) }
  od
}

inline sendFrame(i, d) {
  hq = sent[P(i, d)];
  if
  :: phase[i] == OLD ->
     printf("EV SEND %d->%d #%d by the old instance (pre-cut)\n", i, d, hq);
     upOld[i]!d, hq
  :: else ->
     printf("EV SEND %d->%d #%d by the new instance (post-cut)\n", i, d, hq);
     postCut(i, d, hq)                          /* switched as it is sent */
  fi;
  sent[P(i, d)]++;
  nsent[i]++
}

inline readFrame(i, s, q) {
  printf("EV READ %d reads frame %d->%d #%d (phase %d)\n", i, s, i, q, phase[i]);
  assert(q == rd[P(s, i)]);                     /* (3) per-sender FIFO, once, no gap */
  rd[P(s, i)]++;
  nread[i]++
}

#define CAN_SEND(i, d) ((i) != (d) && phase[i] != PAUSED && sent[P(i, d)] < NF)

proctype VM(byte i) {
  do
  :: atomic { CAN_SEND(i, 0) -> sendFrame(i, 0) }
  :: atomic { CAN_SEND(i, 1) -> sendFrame(i, 1) }
#if NVM >= 3
  :: atomic { CAN_SEND(i, 2) -> sendFrame(i, 2) }
#endif
  :: atomic { phase[i] == OLD && nempty(toOld[i]) -> toOld[i]?hs, hq; readFrame(i, hs, hq) }
  :: atomic { phase[i] == NEW && nempty(toNew[i]) -> toNew[i]?hs, hq; readFrame(i, hs, hq) }
  :: atomic {
       phase[i] == OLD && MAY_CUT(i) ->
       /* the switch-over: Old_VM stops; the member's recorded state */
       hk = 0;
       do
       :: hk < NVM ->
          recSent[P(i, hk)] = sent[P(i, hk)];
          recRd[P(hk, i)] = rd[P(hk, i)];
          hk++
       :: else -> break
       od;
       printf("EV CUT %d: old instance stops\n", i);
       phase[i] = PAUSED;
       ctl!i
     };
     atomic {
       resume[i]?_;                             /* the switch promoted New_VM's port */
       printf("EV RESUME %d: new instance runs\n", i);
       phase[i] = NEW
     }
  :: atomic {
       phase[i] == NEW && nsent[i] == NIO && nread[i] == NIO ->
       nfinished++;
       break
     }
  od
}

init {
  atomic {
    run Switch();
    hi = 0;
    do
    :: hi < NVM -> run VM(hi); hi++
    :: else -> break
    od
  };
  (nfinished == NVM);
  atomic {
    assert(committed);
    hk = 0;
    do
    :: hk < NVM * NVM ->
       if
       :: hk / NVM != hk % NVM -> assert(sent[hk] == NF && rd[hk] == NF)   /* (3) */
       :: else -> skip
       fi;
       hk++
    :: else -> break
    od;
    hi = 0;
    do
    :: hi < NVM ->
       assert(empty(upOld[hi]) && empty(toOld[hi]) && empty(toNew[hi]) && empty(held[hi]));
       hi++
    :: else -> break
    od;
    printf("EV END every frame read once\n");
    finished = true
  };
#ifdef SANITY_REACH
  assert(!(sawHeld && sawLive && sawMoved))
#endif
}

#define PZ(i) (phase[i] == PAUSED)
#ifdef STALL
#define GOAL true
#else
#define GOAL (<> finished)
#endif
ltl cut_live {
  [] ((PZ(0) -> <> !PZ(0)) && (PZ(1) -> <> !PZ(1))
#if NVM >= 3
      && (PZ(2) -> <> !PZ(2))
#endif
     ) && GOAL
}
