//! Encrypted server ID and nonce (draft-ietf-quic-load-balancers-21 §5.4.1 and §5.4.2 for
//! the server, §5.5 for the load balancer): one AES-128-ECB block when they are exactly 16
//! octets, otherwise a four-round Feistel network whose round function is AES-128-ECB.

use aes::{
    Aes128, Block,
    cipher::{BlockDecrypt as _, BlockEncrypt as _, KeyInit as _},
};

use crate::config::{KEY_LEN, MAX_PLAINTEXT_LEN};

/// Half of the longest plaintext (19 octets), rounded up.
const MAX_HALF: usize = MAX_PLAINTEXT_LEN.div_ceil(2);

/// Encrypts `block` (server ID then nonce, 5 to 19 octets) in place.
pub(crate) fn encrypt(key: &[u8; KEY_LEN], block: &mut [u8]) {
    apply(key, block, Direction::Encrypt);
}

/// Decrypts `block` in place: the passes of [`encrypt`] in reverse. A load balancer that
/// only needs the server ID can stop after three when the ID fits in the left half
/// (§5.5.2); this recovers the nonce too, so that a round trip checks every octet.
pub(crate) fn decrypt(key: &[u8; KEY_LEN], block: &mut [u8]) {
    apply(key, block, Direction::Decrypt);
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

fn apply(key: &[u8; KEY_LEN], block: &mut [u8], direction: Direction) {
    let cipher = Aes128::new(key.into());
    if block.len() == 16 {
        let mut one = Block::clone_from_slice(block);
        match direction {
            Direction::Encrypt => cipher.encrypt_block(&mut one),
            Direction::Decrypt => cipher.decrypt_block(&mut one),
        }
        block.copy_from_slice(&one);
        return;
    }
    let mut feistel = Feistel::split(&cipher, block);
    match direction {
        Direction::Encrypt => {
            feistel.xor_right(1);
            feistel.xor_left(2);
            feistel.xor_right(3);
            feistel.xor_left(4);
        }
        Direction::Decrypt => {
            feistel.xor_left(4);
            feistel.xor_right(3);
            feistel.xor_left(2);
            feistel.xor_right(1);
        }
    }
    feistel.join(block);
}

/// The two halves of the four-pass algorithm. With an odd length the middle octet is
/// shared: its high nibble belongs to the left half, its low nibble to the right, and the
/// other nibble of each half's copy is kept zero after every pass.
struct Feistel<'c> {
    cipher: &'c Aes128,
    plaintext_len: u8,
    half: usize,
    odd: bool,
    left: [u8; MAX_HALF],
    right: [u8; MAX_HALF],
}

impl<'c> Feistel<'c> {
    fn split(cipher: &'c Aes128, block: &[u8]) -> Self {
        let len = block.len();
        debug_assert!((5..=MAX_PLAINTEXT_LEN).contains(&len) && len != 16);
        let half = len.div_ceil(2);
        let mut feistel = Self {
            cipher,
            plaintext_len: len as u8,
            half,
            odd: !len.is_multiple_of(2),
            left: [0; MAX_HALF],
            right: [0; MAX_HALF],
        };
        feistel.left[..half].copy_from_slice(&block[..half]);
        feistel.right[..half].copy_from_slice(&block[len - half..]);
        feistel.clear_left_nibble();
        feistel.clear_right_nibble();
        feistel
    }

    fn join(&self, block: &mut [u8]) {
        let half = self.half;
        block[..half].copy_from_slice(&self.left[..half]);
        if self.odd {
            block[half - 1] |= self.right[0];
            block[half..].copy_from_slice(&self.right[1..half]);
        } else {
            block[half..].copy_from_slice(&self.right[..half]);
        }
    }

    /// right ^= truncate(AES(expand(len, pass, left)), half)
    fn xor_right(&mut self, pass: u8) {
        let pad = self.round(pass, &self.left);
        xor(&mut self.right[..self.half], &pad);
        self.clear_right_nibble();
    }

    /// left ^= truncate(AES(expand(len, pass, right)), half)
    fn xor_left(&mut self, pass: u8) {
        let pad = self.round(pass, &self.right);
        xor(&mut self.left[..self.half], &pad);
        self.clear_left_nibble();
    }

    /// AES-128-ECB of expand(len, pass, input) (§5.4.2.2): the half in the most
    /// significant octets, zeros, then the plaintext length and the pass number.
    fn round(&self, pass: u8, input: &[u8; MAX_HALF]) -> Block {
        let mut block = Block::default();
        block[..self.half].copy_from_slice(&input[..self.half]);
        block[14] = self.plaintext_len;
        block[15] = pass;
        self.cipher.encrypt_block(&mut block);
        block
    }

    fn clear_left_nibble(&mut self) {
        if self.odd {
            self.left[self.half - 1] &= 0xf0;
        }
    }

    fn clear_right_nibble(&mut self) {
        if self.odd {
            self.right[0] &= 0x0f;
        }
    }
}

fn xor(into: &mut [u8], pad: &[u8]) {
    for (byte, p) in into.iter_mut().zip(pad) {
        *byte ^= p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;

    /// Every step of the draft's worked example (§5.4.2.4), which prints the AES inputs
    /// and outputs of each pass: the halves after each pass must match them.
    #[test]
    fn the_worked_example_step_by_step() {
        let key: [u8; 16] = hex::decode("fdf726a9893ec05c0632d3956680baf0")
            .unwrap()
            .try_into()
            .unwrap();
        let cipher = Aes128::new(&key.into());
        let plaintext = hex::decode("31441a9c69c275").unwrap();
        let mut f = Feistel::split(&cipher, &plaintext);
        let halves = |f: &Feistel<'_>| (hex::encode(&f.left[..4]), hex::encode(&f.right[..4]));
        assert_eq!(halves(&f), ("31441a90".into(), "0c69c275".into()));
        assert_eq!(
            hex::encode(&f.round(1, &f.left)),
            "a255dd8cdacf01948d3a848c3c7fee23"
        );
        f.xor_right(1);
        assert_eq!(halves(&f).1, "0e3c1ff9");
        f.xor_left(2);
        assert_eq!(halves(&f).0, "d4a04850");
        f.xor_right(3);
        assert_eq!(halves(&f).1, "09be054a");
        // The draft's step 10 XORs with 0xb3e4357c, a misprint of the 0xb334357c it prints
        // as the AES output: 0xd4a04850 ^ 0xb334357c is the 0x67947d2c it then shows.
        f.xor_left(4);
        assert_eq!(halves(&f).0, "67947d20");
        let mut cid = plaintext.clone();
        f.join(&mut cid);
        assert_eq!(hex::encode(&cid), "67947d29be054a");

        let mut again = plaintext.clone();
        encrypt(&key, &mut again);
        assert_eq!(hex::encode(&again), "67947d29be054a");
        decrypt(&key, &mut again);
        assert_eq!(again, plaintext);
    }
}
